"""Typed experiment configuration: YAML files, dotted overrides, strict validation.

A config is a tree of dataclasses. :func:`load_config` reads a YAML file, applies
``key.sub=value`` overrides (values parsed as YAML), and rejects unknown keys and wrong
types with a :class:`~discomkd_geo.errors.ConfigError` that names the dotted key. The
validated config travels inside every checkpoint (:meth:`Config.to_dict`).

The defaults are the paper's settings (Ienco & Fraga Dantas, 2024,
arXiv:2408.07080): ResNet-18 encoders, Adam at lr 1e-4, batch 128, 300 epochs, all
loss weights 1.
"""

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .errors import ConfigError, InputFileError

#: How L_perp penalises the cosine of two embeddings (``loss.orthogonality``); declared
#: here, where no torch import is needed, for ``models/losses.py`` to share.
Orthogonality = Literal["squared", "abs", "signed"]


@dataclass
class ModalityConfig:
    """One input modality.

    Attributes:
        bands: band names to keep, in order; ``None`` keeps all of the modality's bands.
    """

    bands: list[str] | None = None


@dataclass
class NormalizationConfig:
    """Per-band normalisation, statistics computed on the training split.

    Attributes:
        method: ``percentile`` clips each band to its [low, high] percentiles and rescales
            to [0, 1] (the paper's preprocessing); ``meanstd`` standardises.
        low: lower percentile for ``percentile``.
        high: upper percentile for ``percentile``.
        max_samples: images read for the streaming statistics pass (``None``: all).
    """

    method: Literal["percentile", "meanstd"] = "percentile"
    low: float = 2.0
    high: float = 98.0
    max_samples: int | None = None


@dataclass
class AugmentConfig:
    """Batch augmentations (Kornia), applied on the training split only.

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random rotation by a multiple of 90 degrees.
        intensity: per-band gain/offset jitter for reflectance, dB offset for SAR.
        p: probability of each augmentation per sample (the authors use 0.5).
        share_geometry: paired batches share one geometric draw across modalities.
    """

    flips: bool = True
    rot90: bool = True
    intensity: bool = True
    p: float = 0.5
    share_geometry: bool = True


@dataclass
class ScenesConfig:
    """Training from whole co-registered scenes instead of EuroSAT patches.

    Attributes:
        paths: raster file (or directory) per modality, e.g. ``{ms: s2.tif, sar: s1.tif}``.
        labels: land-cover raster of class codes; a window's label is its majority class.
        patch_size: window size in pixels of the first modality's grid.
        samples_per_epoch: windows drawn per training epoch.
        max_nodata: windows with a larger nodata fraction are skipped.
    """

    paths: dict[str, str] = field(default_factory=dict)
    labels: str | None = None
    patch_size: int = 64
    samples_per_epoch: int = 2000
    max_nodata: float = 0.1


@dataclass
class DataConfig:
    """Where the data is and how batches are drawn.

    Attributes:
        dataset: ``eurosat`` (EuroSat-MS-SAR patches) or ``scenes`` (see ``scenes``).
        root: dataset root directory.
        layout: ``eurosat`` (EuroSAT + EuroSAT-SAR downloads), ``copernicus``
            (Copernicus-Bench ``eurosat_s1``/``eurosat_s2``) or ``auto``.
        split: ``random``: seeded stratified 70/10/20, as the paper; ``published``: the
            dataset's split lists.
        split_seed: seed of the random split.
        modalities: the modalities to train, by name, with their band selection.
        paired: draw each batch as aligned pairs; ``False`` draws every modality's samples
            independently and class-balanced, as the authors train.
        drop_unpaired: ignore images whose twin in another modality is missing.
        download: download EuroSat-MS-SAR into ``root`` if it is not there (``--download``).
        batch_size: samples per modality per batch (with ``mosaic``, patches: a batch
            holds ``batch_size / 4`` mosaics).
        mosaic: train on mosaics of four patches cut along random lines (see
            ``discomkd_geo.data.mosaic``): every loss term per patch region, pooled as
            dense inference pools windows; needed by ``model.decoder``. Off by default:
            with the demo recipe it lowered the SAR branch's patch F1 and map accuracy
            (``benchmarks/results.json``, key ``maps``).
        num_workers: DataLoader worker processes.
        cache_mib: keep a split's decoded EuroSat-MS-SAR images in shared memory when
            they take at most this many MiB (MS as its uint16 numbers, SAR float32), so
            epochs after the first read no GeoTIFF (1,050 pairs of 13 + 2 bands: 140 MiB
            in all); 0: read every epoch.
        normalization: per-band normalisation.
        augment: training augmentations.
        scenes: settings for ``dataset: scenes``.
    """

    dataset: Literal["eurosat", "scenes"] = "eurosat"
    root: str | None = None
    layout: Literal["auto", "eurosat", "copernicus"] = "auto"
    split: Literal["random", "published"] = "random"
    split_seed: int = 0
    modalities: dict[str, ModalityConfig] = field(
        default_factory=lambda: {"ms": ModalityConfig(), "sar": ModalityConfig()}
    )
    paired: bool = False
    drop_unpaired: bool = False
    download: bool = False
    batch_size: int = 128
    mosaic: bool = False
    num_workers: int = 2
    cache_mib: int = 2048
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)


@dataclass
class ModelConfig:
    """Encoder architecture.

    Attributes:
        backbone: ``resnet18`` (the paper's choice, first convolution adapted to the band
            count) or ``small_cnn`` (a few conv layers, for demos and tests).
        width: base channel count of ``small_cnn``.
        padding: what the encoders' convolutions see beyond an image's edge: ``zeros``
            (torchvision's, the paper's) or ``reflect`` (the image mirrored), with which
            a training patch's edge looks like the inside of a uniform region of a scene,
            so the dense and per-pixel maps keep the patch classifier's accuracy there
            (see ``discomkd_geo.models.backbones.PADDINGS``).
        weights: optional local state-dict file to initialise every encoder from.
        decoder: give every branch a per-pixel decoder (``discomkd_geo.models.decoder``),
            trained jointly with it on the mosaics' label maps (needs ``data.mosaic``);
            maps then use mode ``pixel``.
        decoder_epochs: after training, give every predictable branch a per-pixel
            decoder fitted for this many epochs on mosaics of the training split with the
            branch frozen (two-stage, ``discomkd_geo.training.decoder_fit``: the branch's
            patch scores stay those of the run); maps then use mode ``pixel``. 0: none.
        decoder_modalities: the branches ``decoder_epochs`` gives a decoder (e.g.
            ``[sar]`` where only SAR maps are wanted: each decoder costs its fitting
            time); ``null``: every predictable branch.
        teacher: for the ``kd`` and ``dkd`` baselines, the trained late-fusion teacher:
            a ``teacher`` run directory or its ``best-fused.ckpt``.
    """

    backbone: Literal["resnet18", "small_cnn"] = "resnet18"
    width: int = 32
    padding: Literal["zeros", "reflect"] = "zeros"
    weights: str | None = None
    decoder: bool = False
    decoder_epochs: int = 0
    decoder_modalities: list[str] | None = None
    teacher: str | None = None


@dataclass
class LossConfig:
    """Loss-term weights and variants (see ``discomkd_geo.models.losses``).

    Attributes:
        cl: weight of the per-modality task classification loss L_cl.
        adv: weight of the adversarial modality loss L_adv (through the GRL).
        mod: weight of the modality classification loss L_mod on z_inf and z_irr.
        aux: weight of the auxiliary task loss L_aux on z_inv and z_inf.
        perp: weight of the orthogonality loss L_perp.
        orthogonality: ``squared`` cosine (default, minimised at orthogonality), ``abs``
            cosine, or ``signed`` (the authors' public code: rewards anti-correlation).
        grl_schedule: ``constant`` lambda, or the DANN ramp 2/(1+exp(-10p)) - 1.
        grl_lambda: GRL coefficient (the ramp's final value).
        kd_temperature: softmax temperature of the KD baselines.
        kd_alpha: weight of the distillation term in the KD baselines.
        dkd_alpha: DKD target-class term weight (Zhao et al., 2022).
        dkd_beta: DKD non-target-class term weight.
        pixel: weight of the decoder's per-pixel cross-entropy (``model.decoder``).
    """

    cl: float = 1.0
    adv: float = 1.0
    mod: float = 1.0
    aux: float = 1.0
    perp: float = 1.0
    orthogonality: Orthogonality = "squared"
    grl_schedule: Literal["constant", "dann"] = "constant"
    grl_lambda: float = 1.0
    kd_temperature: float = 4.0
    kd_alpha: float = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    pixel: float = 1.0


@dataclass
class OptimConfig:
    """Optimiser (Adam).

    Attributes:
        lr: learning rate.
        weight_decay: L2 weight decay.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer``.

    Attributes:
        max_epochs: training epochs.
        accelerator: ``auto`` uses CUDA when present, else the CPU.
        devices: device count (per node) or ``auto``.
        strategy: how several devices train together: ``auto`` (one device: a single
            process), ``ddp`` (one process per device, Lightning launching the others;
            gradients averaged every step) or ``fsdp`` (parameters sharded too; for
            models larger than ResNet-18 DisCoM-KD, not tested here). See
            ``docs/guide/distributed-training.md``.
        num_nodes: machines of a multi-node run (each with ``devices`` devices).
        precision: ``32-true``; ``bf16-mixed`` (bfloat16 autocast: Ampere GPUs and
            later, and CPUs) or ``16-mixed`` (float16 autocast with loss scaling).
        limit_train_batches: fraction or number of training batches per epoch.
        early_stopping_patience: epochs without improvement before stopping (``None``: off).
        early_stopping_rule: what must improve. ``heads``: any head's own best validation
            weighted F1, the score each head's kept epoch is chosen by; ``mean``: the mean
            over heads (before 2026-11-29), which can miss one head's new best while
            another dips, and go on while no head improves.
        log_every_n_steps: logging interval.
    """

    max_epochs: int = 300
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    num_nodes: int = 1
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    limit_train_batches: float | int = 1.0
    early_stopping_patience: int | None = None
    early_stopping_rule: Literal["heads", "mean"] = "heads"
    log_every_n_steps: int = 50


@dataclass
class Config:
    """A whole experiment.

    Attributes:
        seed: global seed (weights, sampling, augmentation).
        method: ``discomkd`` or a baseline: ``mono``, ``teacher``, ``kd``, ``dkd``.
        data: data settings.
        model: encoder settings.
        loss: loss settings.
        optim: optimiser settings.
        trainer: Lightning trainer settings.
    """

    seed: int = 0
    method: Literal["discomkd", "mono", "teacher", "kd", "dkd"] = "discomkd"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable), the inverse of :func:`from_dict`."""
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{name: description}`` from the ``Attributes:`` section of a dataclass docstring."""
    lines = (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines()
    docs: dict[str, str] = {}
    name = ""
    for line in lines:
        text = line.strip()
        head, sep, rest = text.partition(": ")
        if sep and head.isidentifier() and len(line) - len(line.lstrip()) == 8:
            name, docs[head] = head, rest
        elif text and name:
            docs[name] += " " + text
    return {k: " ".join(v.replace("``", "`").split()) for k, v in docs.items()}


def _describe(tp: Any) -> str:
    """A config type as a reader writes it in YAML: ``int``, ``one of a, b``, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        value = "section" if dataclasses.is_dataclass(args[1]) else _describe(args[1])
        return f"mapping of name to {value}"
    return _type_name(tp)


def config_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every config key: ``(dotted key, type, default as YAML, description)``.

    Generated from the dataclasses and their docstrings, so the reference cannot drift.
    A mapping of sections (``data.modalities``) is listed as ``data.modalities.<name>.*``.
    """
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    defaults = dataclasses.asdict(cls())
    rows = []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        value_tp = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
        if dataclasses.is_dataclass(tp):
            rows += config_keys(tp, f"{key}.")
            continue
        default = yaml.safe_dump(defaults[f.name], default_flow_style=True).strip()
        rows.append((key, _describe(tp), default.removesuffix("\n...").strip(),
                     docs.get(f.name, "")))
        if dataclasses.is_dataclass(value_tp):
            rows += config_keys(value_tp, f"{key}.<name>.")
    return rows


def config_reference() -> str:
    """The Markdown reference of every config key (``docs/config.md``)."""
    lines = ["# Configuration reference", "",
             "Every key of a `discomkd-geo train` / `compare` YAML config, with its type,",
             "default and meaning. Generated from the dataclasses in",
             "`discomkd_geo/config.py` (`python -m discomkd_geo.config > docs/config.md`);",
             "a test checks that this file is current. Set a key in a YAML file or on the",
             "command line with `--set key=value`; print the effective config with",
             "`discomkd-geo train --config FILE --print-config`.", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in config_keys():
        lines.append(f"| `{key}` | {tp} | `{default}` | {doc.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return {str(k): _convert(v if v is not None else {}, args[1], f"{key}.{k}")
                for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp in (bool, str) and not isinstance(value, tp):
        raise ConfigError(key, f"expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(f"{prefix}{k}" if not prefix else f"{prefix}.{k}",
                              f"unknown key; expected one of {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_yaml(config: Config) -> str:
    """The config as YAML, every key present (what ``train --print-config`` shows)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def from_dict(data: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`.

    Raises:
        ConfigError: a key is unknown or a value has the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError("<root>", f"expected a mapping, got {data!r}")
    return _build(Config, data)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML.

    Raises:
        ConfigError: the assignment has no ``=``, or its value is not valid YAML.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(assignment, "override must look like key.sub=value")
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"{part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(key, f"value {raw!r} is not valid YAML ({yaml_problem(err)})") from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line from a YAML parse error: ``line L, column C: <problem>`` (1-based)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply dotted overrides.

    Args:
        path: YAML file; ``None`` starts from the paper defaults.
        overrides: ``key.sub=value`` strings, applied in order.

    Raises:
        InputFileError: unreadable file or invalid YAML (line and column named).
        ConfigError: unknown key or wrong type (the key is named).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except OSError as err:
            raise InputFileError(path, f"cannot read config file ({err.strerror})") from err
        except yaml.YAMLError as err:
            raise InputFileError(path, f"invalid YAML at {yaml_problem(err)}") from err
    # Overrides apply on top of the file *with defaults filled in*, so that
    # ``data.modalities.sar.bands=[VV]`` edits one modality instead of replacing the set.
    merged = from_dict(data).to_dict()
    for assignment in overrides:
        apply_override(merged, assignment)
    return from_dict(merged)


if __name__ == "__main__":
    print(config_reference(), end="")

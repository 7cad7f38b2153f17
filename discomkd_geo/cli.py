"""The ``discomkd-geo`` command line (and the ``rio discomkd`` plugin).

Top of the import flow: CLI -> training / inference -> models / data. Heavy libraries
(torch, rasterio, dask) are imported inside the commands, so ``--help`` is instant.
Every :class:`~discomkd_geo.errors.DiscomkdGeoError`, ``OSError`` and rasterio error
becomes a one-line ``Error: <path>: <problem>`` and a non-zero exit; ``--debug`` shows the
traceback instead.
"""

import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

import click

from .errors import DiscomkdGeoError, SettingsError
from .inference.settings import Mode
from .training.map_score import MapScore

F = TypeVar("F", bound=Callable[..., Any])

#: ``click.Context.meta`` key set by ``--debug``.
_DEBUG = "discomkd_geo.debug"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


#: The options of the parameters library messages suggest that are not mapping settings
#: (``SceneInput`` fields, ``trusted``); the mapping settings' options are generated
#: (:func:`_options_of_params`).
_SCENE_OPTIONS = {"bands": "--bands", "sar_units": "--sar-units", "scale": "--ms-scale",
                  "offset": "--ms-offset", "crs": "--crs", "nodata": "--nodata",
                  "trusted": "--trust-checkpoint"}


def _options_of_params() -> dict[str, str]:
    """Python parameter -> the option that sets it on the command line."""
    from .inference.settings import setting_fields

    return {**_SCENE_OPTIONS, **{f.name: f.flag for f in setting_fields() if f.flag}}


def cli_words(text: str) -> str:
    """``text`` with parameters written the Python way as the command line's options.

    ``scale=10000`` becomes ``--ms-scale 10000``, ``force=True`` and ``bands=`` become
    ``--force`` and ``--bands``, and a name with an underscore (``scheduler_timeout``)
    becomes its option wherever it stands; dotted config keys are left alone.
    """
    options = _options_of_params()
    names = "|".join(sorted(map(re.escape, options), key=len, reverse=True))

    def option(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        value = value.strip("'\"") if value else ""
        return options[name] if value in ("", "True") else f"{options[name]} {value}"

    text = re.sub(rf"(?<![\w.-])({names})=('[^']*'|[^\s,;)]*)", option, text)
    underscored = "|".join(re.escape(n) for n in options if "_" in n)
    return re.sub(rf"(?<![\w.-])({underscored})(?![\w=])",
                  lambda m: options[m.group(1)], text)


def error_message(err: Exception) -> str | None:
    """The one-line message the CLI prints for ``err``; ``None``: not an error it reports.

    The package's errors carry their message, with the parameters they suggest written
    as options (:func:`cli_words`); an ``OSError`` (rasterio's I/O errors are ones) is
    told as ``<path>: <problem>``; other rasterio errors by their first line.
    """
    if isinstance(err, SettingsError):
        return f"{_options_of_params().get(err.param, err.param)}: {cli_words(err.problem)}"
    if isinstance(err, DiscomkdGeoError):
        return cli_words(str(err))
    if isinstance(err, OSError):
        if err.filename is not None and err.strerror:
            return f"{os.fsdecode(err.filename)}: {err.strerror}"
        return _first_line(str(err)) or type(err).__name__
    if type(err).__module__.split(".")[0] == "rasterio":
        return _first_line(str(err)) or type(err).__name__
    return None


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # ctx.meta is shared by nested commands: a sub-group's unset flag must not clear it.
    ctx.meta[_DEBUG] = ctx.meta.get(_DEBUG, False) or value


class _Group(click.Group):
    """Click group with ``--debug`` that turns errors into one-line CLI errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
            help="Show the full traceback of an error instead of one line."))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            message = None if ctx.meta.get(_DEBUG) else error_message(err)
            if message is None:
                raise
            raise click.ClickException(message) from err


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="discomkd-geo")
@click.option("-v", "--verbose", count=True,
              help="More detail: debug lines and Lightning's own messages.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """DisCoM-KD for Sentinel-2 / Sentinel-1 land-cover mapping.

    Train every single-modality classifier at once on paired MS/SAR data, then map land
    cover from whichever modality is available.
    """
    from .logs import configure

    configure(-1 if quiet else verbose)
    _interruptible()


def _interruptible() -> None:
    """Stop on SIGINT even when started with it ignored.

    A shell script's background jobs, and the processes such jobs start, inherit SIGINT
    ignored, and Python then never raises KeyboardInterrupt: an interrupt sent to this
    process (the QGIS plugin's Cancel sends one) went unheeded, and the run finished and
    wrote its outputs. Python's own handler stops it instead, its temporaries removed.
    """
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _ConfigKeysCommand(click.Command):
    """A command whose ``--help`` ends with every config key (generated, see docs/config.md)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the config keys after the options."""
        from .config import config_keys

        with formatter.section("Config keys (YAML or --set KEY=VALUE; docs/config.md)"):
            formatter.write_dl([(key, f"{doc} [{tp}; default: {default}]")
                                for key, tp, default, doc in config_keys()])


# --------------------------------------------------------------------------- options
# Each option shared by several commands is declared once here; the commands pass the
# help text where its meaning differs.
def _config_option(help: str) -> Callable[[F], F]:
    return click.option("--config", "config_path",
                        type=click.Path(dir_okay=False, path_type=Path), help=help)


def _data_root_option(help: str = "Dataset root (overrides data.root).") -> Callable[[F], F]:
    return click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
                        help=help)


_download_option = click.option(
    "--download", is_flag=True,
    help="Download EuroSat-MS-SAR into the root if missing (data.download).")


def _set_option(help: str = "Dotted config override, e.g. --set trainer.max_epochs=2 "
                            "(repeatable).") -> Callable[[F], F]:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def _overwrite_option(help: str) -> Callable[[F], F]:
    return click.option("--overwrite", is_flag=True, help=help)


def _seed_option(help: str) -> Callable[[F], F]:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def _checkpoint_option(help: str = "Training checkpoint, run directory or exported "
                                   "predictor (.pt, or .onnx: run by onnxruntime, without "
                                   "PyTorch).", exists: bool = False) -> Callable[[F], F]:
    checkpoint = click.option("--checkpoint", required=True,
                              type=click.Path(exists=exists, path_type=Path), help=help)
    # Every command that reads a checkpoint can be told to trust it (models/_files.py).
    trust = click.option("--trust-checkpoint", "trusted", is_flag=True,
                         help="Load a checkpoint whose pickle would run code (refused by "
                              "default): only for files you made yourself.")
    return lambda command: checkpoint(trust(command))


def _json_option(help: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


#: ``click.Context.meta`` key: the deprecated ``--quiet`` of a command was given.
_QUIET_ALIAS = "discomkd_geo.quiet"


def _quiet_alias(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        click.echo("warning: --quiet after the command is deprecated; use --no-progress "
                   "(discomkd-geo -q means warnings only)", err=True)
        ctx.meta[_QUIET_ALIAS] = True


def _no_progress(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # Click handles the options given on the command line first: the alias's mark is set.
    return value or ctx.meta.pop(_QUIET_ALIAS, False)


def _no_progress_option(help: str) -> Callable[[F], F]:
    """``--no-progress`` (and the deprecated, hidden ``--quiet`` it replaces)."""

    def decorate(command: F) -> F:
        command = click.option("--no-progress", is_flag=True, callback=_no_progress,
                               help=help)(command)
        return click.option("--quiet", is_flag=True, hidden=True, expose_value=False,
                            callback=_quiet_alias)(command)

    return decorate


# --------------------------------------------------------------------------- train
def _load(config_path: Path | None, overrides: tuple[str, ...], data_root: Path | None,
          download: bool) -> Any:
    """The config of a command: file, then ``--set`` overrides, then the dedicated options."""
    from .config import load_config

    extra = (f"data.root={data_root}",) if data_root is not None else ()
    return load_config(config_path, overrides + extra + (("data.download=true",) * download))


@main.command(cls=_ConfigKeysCommand)
@_config_option("YAML config (configs/eurosat_ms_sar.yaml: the paper's settings).")
@_data_root_option()
@_download_option
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory for checkpoints, logs, plots and metrics (required).")
@_set_option()
@click.option("--print-config", is_flag=True,
              help="Print the effective config (every key, as YAML) and exit.")
@_overwrite_option("Replace a non-empty run directory.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its latest epoch (RUN/checkpoints/"
                   "last.ckpt); a finished run is reported as it is.")
@_no_progress_option("No progress bar or epoch lines.")
def train(config_path: Path | None, data_root: Path | None, download: bool,
          run_dir: Path | None, overrides: tuple[str, ...], print_config: bool, overwrite: bool,
          resume: bool, no_progress: bool) -> None:
    """Train DisCoM-KD (or a baseline: --set method=mono) and test each modality."""
    config = _load(config_path, overrides, data_root, download)
    if print_config:
        from .config import to_yaml

        click.echo(to_yaml(config), nl=False)
        return
    if run_dir is None:
        raise click.UsageError("Missing option '--out'.")
    from .training.train import train as run_training

    result = run_training(config, run_dir, overwrite=overwrite, resume=resume,
                          progress=not no_progress, echo=click.echo)
    for m, metrics in result.metrics.items():
        click.echo(f"{m}: test weighted F1 {metrics['f1_weighted']:.4f}, "
                   f"macro F1 {metrics['f1_macro']:.4f}, OA {metrics['oa']:.4f} "
                   f"({result.checkpoints[m]})")
    click.echo(f"run directory: {result.run_dir}")


@main.command()
@_config_option("YAML config shared by every method (its 'method' key is ignored).")
@_data_root_option()
@_download_option
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Paired seeds per method; seed i draws the i-th split and initialisation.")
@click.option("--lrs", default="3e-4,1e-3,3e-3", show_default=True, metavar="LR[,LR...]",
              help="Learning-rate grid, chosen per method on the first seed's validation.")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="Early stopping: epochs without validation improvement.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs trained at once, each in its own process with one torch thread.")
@click.option("--out", "report_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Report directory: report.md, results.json, plots and every run.")
@click.option("--methods", multiple=True, metavar="NAME[,NAME...]",
              help="Methods/ablations to train (default: all but dkd; kd/dkd add their "
                   "teacher), e.g. --methods mono,discomkd.")
@_set_option("Dotted config override for every run (repeatable).")
@click.option("--quick", is_flag=True,
              help="Small end-to-end check: 2 seeds, 2 rates, 2 epochs, tiny CNN, "
                   "mono and discomkd (explicit options still apply on top).")
@click.option("--map-scenes", type=click.IntRange(min=0), default=MapScore.scenes,
              show_default=True,
              help="Also score every run's SAR-only map of this many held-out synthetic "
                   "scenes (seeds 101, 102, ...; made once under OUT/scenes): map OA and "
                   "edge OA per method and paired by seed (0: no map score).")
@click.option("--map-mode", type=click.Choice(get_args(Mode)), default=MapScore.mode,
              show_default=True,
              help=f"How the map score maps: as predict does by default (auto: pixel for "
                   f"runs with decoders, else windows at stride {MapScore.stride}), windows, "
                   "dense, or pixel (a run without a per-pixel decoder is first given one, "
                   "trained on mosaics of its training split).")
@click.option("--map-size", type=click.IntRange(min=64), default=MapScore.size, hidden=True,
              help="Side of the held-out scenes in pixels (tests use small ones).")
@click.option("--regenerate", is_flag=True,
              help="Only rewrite OUT's report and plots from OUT/results.json.")
@_overwrite_option("Replace a non-empty report directory.")
@click.option("--resume", is_flag=True,
              help="Keep the runs OUT/results.json records and train only the missing ones.")
@click.pass_context
def compare(ctx: click.Context, config_path: Path | None, data_root: Path | None,
            download: bool, seeds: int, lrs: str, patience: int, jobs: int, report_dir: Path,
            methods: tuple[str, ...], overrides: tuple[str, ...], quick: bool,
            map_scenes: int, map_mode: Mode, map_size: int, regenerate: bool,
            overwrite: bool, resume: bool) -> None:
    """Train DisCoM-KD, the baselines and the ablations alike; write a comparison report.

    Protocol: learning rate per method chosen on validation, early stopping, paired seeds,
    paired differences with 95% intervals (see discomkd_geo.training.compare).
    """
    import sys

    from .training import compare as comparison

    if regenerate:
        comparison.regenerate(report_dir)
        click.echo(f"report: {report_dir / 'report.md'}")
        return
    from .errors import ConfigError

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    names = [n.strip() for group in methods for n in group.split(",") if n.strip()]
    try:
        grid = [float(v) for v in lrs.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError("--lrs", f"expected comma-separated numbers, got {lrs!r}") from err
    if quick:
        q = comparison.QUICK
        overrides = (*q["overrides"], *overrides)
        seeds = seeds if given("seeds") else q["seeds"]
        grid = grid if given("lrs") else list(q["lrs"])
        patience = patience if given("patience") else q["patience"]
        names = names or list(q["methods"])
    config = _load(config_path, overrides, data_root, download)
    comparison.compare(config, report_dir, seeds=seeds, methods=names, lrs=grid,
                       patience=patience, jobs=jobs, overwrite=overwrite, resume=resume,
                       command=comparison.command_line(sys.argv[1:]),
                       map_score=MapScore(map_scenes, map_mode, size=map_size),
                       echo=click.echo)
    click.echo(f"report: {report_dir / 'report.md'}")


@main.command()
@_checkpoint_option()
@click.option("--modality", required=True, help="Branch to evaluate, e.g. sar.")
@_data_root_option("Dataset root (default: the one recorded in the checkpoint).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@_json_option("Print the metrics as JSON.")
def evaluate(checkpoint: Path, trusted: bool, modality: str, data_root: Path | None,
             split: str, as_json: bool) -> None:
    """Score one modality's classifier on a dataset split, as deployed (raw input)."""
    import json

    from .training.evaluate import evaluate as run_evaluation

    metrics = run_evaluation(checkpoint, modality, data_root=data_root, split=split,
                             trusted=trusted)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(f"{modality} {split}: weighted F1 {metrics['f1_weighted']:.4f}, "
                   f"macro F1 {metrics['f1_macro']:.4f}, OA {metrics['oa']:.4f} "
                   f"on {metrics['samples']} samples")


@main.command()
@_checkpoint_option("Training checkpoint or run directory.")
@click.option("--modality", required=True, help="Branch to export, e.g. sar.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["torch", "onnx", "deepness"]),
              help="torch: a .pt file for load_predictor; onnx: an ONNX graph taking raw "
                   "patches (normalisation inside), runnable without PyTorch, plus, for a "
                   "branch with a per-pixel decoder, the graph of mode pixel (in the same "
                   "file: predict then maps per pixel, as with the torch branch); deepness: "
                   "ONNX with a per-pixel output for the QGIS plugin Deepness (the decoder's "
                   "over each tile when the branch has one, else the window's).  "
                   "[default: onnx for an .onnx OUTPUT, else torch]")
@_overwrite_option("Replace OUTPUT if it exists.")
def export(checkpoint: Path, trusted: bool, modality: str, output: Path, fmt: str | None,
           overwrite: bool) -> None:
    """Write one modality's predictor to a small self-contained file for deployment."""
    from .files import check_outputs

    # Before the checkpoint is loaded: an output that cannot be written fails at once.
    check_outputs({"predictor": output}, overwrite)
    from .models.predictor import load_predictor

    predictor = load_predictor(checkpoint, modality, trusted=trusted)
    fmt = fmt or ("onnx" if output.suffix.lower() == ".onnx" else "torch")
    if fmt == "torch":
        predictor.save(output, overwrite=overwrite)
    else:
        from .models.onnx_export import export_onnx

        export_onnx(predictor, output, per_pixel=fmt == "deepness", overwrite=overwrite)
    size = output.stat().st_size / 2**20
    click.echo(f"{output}: {modality} predictor ({fmt}), {len(predictor.info.bands)} bands "
               f"{predictor.info.bands}, {len(predictor.info.classes)} classes, {size:.1f} MiB")


@main.command("fit-decoder")
@click.option("--run", "run_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Training run directory (train --out).")
@click.option("--modality", "modalities", multiple=True,
              help="Branch to give a decoder (repeatable) [default: every branch that maps "
                   "from one modality].")
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True,
              help="Passes over the run's training split (as mosaics, and as patches). "
                   "More help less and less: on the demo's 1,050 training pairs an "
                   "earlier demo model's SAR map of the demo scene scored OA 0.770 (4), "
                   "0.789 (8), 0.800 (24) and 0.814 (48); today's scores 0.798 (8) and "
                   "0.799 (16).")
@_overwrite_option("Replace the run's existing decoders.")
def fit_decoder(run_dir: Path, modalities: tuple[str, ...], epochs: int,
                overwrite: bool) -> None:
    """Give a trained run's branches a per-pixel decoder (maps then use mode pixel).

    The branches stay frozen (their patch scores are unchanged); each decoder learns the
    label maps of mosaics of the run's training split and its isolated patches, and is
    saved in RUN/decoders/, which the run directory then loads. What train does with
    model.decoder_epochs.
    """
    from .training.decoder_fit import fit_decoders, run_modalities

    written = fit_decoders(run_dir, None, list(modalities) or run_modalities(run_dir),
                           epochs=epochs, overwrite=overwrite)
    for modality, path in written.items():
        click.echo(f"{path}: {modality} branch with a per-pixel decoder ({epochs} epochs)")


# --------------------------------------------------------------------------- synth
@main.group(cls=_Group)
def synth() -> None:
    """Generate synthetic data in the published layouts (for demos and tests)."""


@synth.command("eurosat")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", type=click.IntRange(min=1), default=20, show_default=True,
              help="Images per class (the real dataset has 2,000-3,000).")
@_seed_option("Random seed of the generated images.")
@click.option("--layout", type=click.Choice(["eurosat", "copernicus"]), default="eurosat",
              show_default=True, help="On-disk layout to write.")
@_overwrite_option("Replace OUT if it exists and is not empty.")
def synth_eurosat(out: Path, per_class: int, seed: int, layout: str, overwrite: bool) -> None:
    """Write a synthetic EuroSat-MS-SAR dataset to OUT."""
    from .data.synthetic import make_eurosat

    summary = make_eurosat(out, per_class=per_class, seed=seed, layout=layout,
                           overwrite=overwrite)
    click.echo(summary)


@synth.command("scene")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.IntRange(min=64), default=512, show_default=True,
              help="MS scene width and height in pixels (10 m).")
@_seed_option("Random seed of the scene (parcels, classes, textures).")
@_overwrite_option("Replace OUT if it exists and is not empty.")
def synth_scene(out: Path, size: int, seed: int, overwrite: bool) -> None:
    """Write a co-registered MS/SAR scene pair with its land-cover truth to OUT."""
    from .data.synthetic import make_scene

    summary = make_scene(out, size=size, seed=seed, overwrite=overwrite)
    click.echo(summary)


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo_out"), show_default=True, help="Output directory.")
@click.option("--per-class", type=click.IntRange(min=4),
              help="Synthetic training images per class [150; --quick: 12].")
@_seed_option("Seed of the synthetic training set and of training.")
@_config_option("Training config (default: the packaged configs/demo.yaml).")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the demo sar.tif and truth.tif (default: the packaged "
                   "tiles/demo).")
@_set_option()
@click.option("--quick", is_flag=True,
              help="Smoke run in well under a minute: 12 images per class, 1 epoch, a "
                   "narrower CNN (--per-class and --set still apply).")
@_overwrite_option("Replace the outputs of an earlier demo.")
@_no_progress_option("No progress bars or epoch lines.")
def demo(out: Path, per_class: int | None, seed: int, config_path: Path | None,
         tiles: Path | None, overrides: tuple[str, ...], quick: bool, overwrite: bool,
         no_progress: bool) -> None:
    """Train on synthetic EuroSat-MS-SAR, map the demo scene from SAR alone, score it.

    The figures are the same on every machine: training and mapping run on one CPU
    thread with deterministic algorithms.
    """
    from . import demo as demo_module

    if quick:
        per_class = per_class or demo_module.QUICK_PER_CLASS
        overrides = demo_module.QUICK_OVERRIDES + overrides
    demo_module.run_demo(out, overwrite=overwrite,
                         config_path=config_path or demo_module.DEMO_CONFIG,
                         tiles=tiles or demo_module.DEMO_TILES, per_class=per_class or 150,
                         seed=seed, overrides=overrides, progress=not no_progress)


# --------------------------------------------------------------------------- predict
def _per_modality(values: tuple[str, ...], modalities: list[str], option: str
                  ) -> dict[str, str]:
    """Values of a per-modality option (``[MODALITY=]VALUE``) as ``{modality: value}``."""
    given = {}
    for value in values:
        modality, sep, text = value.partition("=")
        if not sep:
            if len(modalities) != 1:
                raise click.BadParameter("with several scenes write MODALITY=VALUE",
                                         param_hint=option)
            modality, text = modalities[0], value
        if modality not in modalities:
            raise click.BadParameter(f"no {modality!r} scene given", param_hint=option)
        given[modality] = text
    return given


_MS_OFFSET_HELP = (
    "Then add this to the MS values. Sentinel-2 L1C and L2A digital numbers of processing "
    "baseline 04.00 and later (products from 25 January 2022 on) carry +1000: reflectance = "
    "(DN - 1000) / 10000, so pass -1000 to match models trained on earlier products such as "
    "EuroSAT. L2A example: --ms-offset -1000 for a 2023 L2A .SAFE; --ms-scale 10000 for L2A "
    "surface reflectance already divided by 10000 (0-1).")


def _input_options(command: Any) -> Any:
    """The options that describe the scenes, shared by ``predict`` and ``inspect``."""
    options = [
        click.option("--bands", multiple=True, metavar="[MODALITY=]NAME,...",
                     help="Names of the input's bands in order (files in the order given), "
                          "when band descriptions and file names do not name them "
                          "(repeatable per modality)."),
        click.option("--sar-units", type=click.Choice(["db", "linear", "amplitude"]),
                     help="How the SAR input stores backscatter [default: from ASF HyP3 RTC "
                          "file names, else db]. RTC products on public catalogues are "
                          "gamma0 linear power."),
        click.option("--sar-db", is_flag=True, hidden=True,
                     help="Deprecated: the SAR input holds linear power (--sar-units linear)."),
        click.option("--ms-scale", type=float, default=1.0, show_default=True,
                     help="Multiply the MS values by this: 10000 for reflectance 0-1."),
        click.option("--ms-offset", type=float, default=0.0, show_default=True,
                     help=_MS_OFFSET_HELP),
        click.option("--crs", metavar="CRS",
                     help="CRS to warp rasters georeferenced only by GCPs or RPCs to, e.g. "
                          "EPSG:32631 [default: UTM zone of the scene centre]."),
        click.option("--nodata", multiple=True, metavar="[MODALITY=]VALUE",
                     help="The value that marks missing pixels in the scene (in any band), "
                          "instead of its files' nodata tags: for exports that fill outside "
                          "the swath without tagging it (SNAP, Earth Engine: --nodata 0); "
                          "repeatable per modality."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _scene_inputs(scenes: dict[str, list[Path | str]], bands: tuple[str, ...],
                  sar_units: str | None, sar_db: bool, ms_scale: float, ms_offset: float,
                  crs: str | None, nodata: tuple[str, ...]) -> dict[str, Any]:
    """The per-modality :class:`~discomkd_geo.inference.io.SceneInput` of the options."""
    from .constants import MS, SAR
    from .inference.io import SceneInput

    if sar_db:
        if sar_units not in (None, "linear"):
            raise click.UsageError("--sar-db (deprecated) means --sar-units linear; "
                                   f"it contradicts --sar-units {sar_units}")
        click.echo("warning: --sar-db is deprecated; use --sar-units linear", err=True)
        sar_units = "linear"
    names = _per_modality(bands, list(scenes), "--bands")
    fills = _per_modality(nodata, list(scenes), "--nodata")
    inputs = {}
    for modality, paths in scenes.items():
        scale, offset = (ms_scale, ms_offset) if modality == MS else (1.0, 0.0)
        try:
            fill = float(fills[modality]) if modality in fills else None
        except ValueError as err:
            raise click.BadParameter(f"{fills[modality]!r} is not a number",
                                     param_hint="--nodata") from err
        listed = [b.strip() for b in names[modality].split(",")] if modality in names else None
        inputs[modality] = SceneInput(paths, listed, sar_units if modality == SAR else None,
                                      scale, offset, crs, fill)
    return inputs


class _ScenePath(click.ParamType):
    """A scene: a local path (as ``Path``) or a URL kept as given (``Path`` folds ``//``)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str | Path:
        """``https://``, ``s3://`` and ``/vsi...`` stay strings; anything else is a Path."""
        text = os.fspath(value)
        return text if "://" in text or text.startswith("/vsi") else Path(text)


#: The type of every scene option (local files, directories or URLs).
_SCENE = _ScenePath()


def _click_type(f: Any) -> dict[str, Any]:
    """The ``click.option`` arguments of a mapping setting (see ``inference/settings.py``)."""
    import types
    import typing

    union = typing.get_origin(f.type) in (typing.Union, types.UnionType)
    kinds = [a for a in typing.get_args(f.type) if a is not type(None)] if union else [f.type]
    bounds = {"min": f.minimum, "max": f.maximum}
    if bool in kinds:
        return {"is_flag": True}
    if typing.get_origin(kinds[0]) is typing.Literal:
        return {"type": click.Choice(typing.get_args(kinds[0])), "show_default": True}
    if any(typing.get_origin(k) is os.PathLike for k in kinds):
        return {"type": click.Path(dir_okay=False, path_type=Path), "metavar": f.metavar}
    if kinds == [int]:
        return {"type": click.IntRange(**bounds), "show_default": f.default is not None}
    if kinds == [float]:
        return {"type": click.FloatRange(**bounds, min_open=f.exclusive_minimum),
                "show_default": f.default is not None}
    return {"type": str, "metavar": f.metavar}


def _setting_options(command: F) -> F:
    """One option per mapping setting, generated from the settings dataclasses."""
    from .inference.settings import setting_fields

    for f in reversed(setting_fields()):
        if f.flag is not None:
            command = click.option(f.flag, f.name, default=f.default, help=f.help,
                                   **_click_type(f))(command)
    return command


def _map_settings(values: dict[str, Any]) -> Any:
    """The :class:`~discomkd_geo.inference.settings.MapSettings` of the generated options."""
    from .inference.settings import MapSettings, setting_fields

    return MapSettings.of(**{f.name: values[f.name] for f in setting_fields() if f.flag})


@click.command()
@_checkpoint_option(exists=True)
@click.option("--sar", multiple=True, type=_SCENE,
              help="Sentinel-1 scene: a VV/VH stack, or one file per polarisation (repeat "
                   "--sar; e.g. the *_VV.tif and *_VH.tif of an RTC product), their "
                   "directory, or https:// or s3:// URLs (read by range requests). A raw "
                   ".SAFE is refused: calibrate and terrain-correct first.")
@click.option("--sar-vv", type=_SCENE,
              help="The VV file of a scene given as one file per polarisation.")
@click.option("--sar-vh", type=_SCENE,
              help="The VH file (with --sar-vv).")
@click.option("--ms", multiple=True, type=_SCENE,
              help="Sentinel-2 scene: a stack, one file per band (repeat --ms), or a "
                   "directory of band files such as an L1C/L2A .SAFE (finest resolution "
                   "of each band; every band is resampled to the model's pixel size).")
@click.option("--scene", multiple=True, type=_SCENE,
              help="Scene of another modality, named by --modality.")
@click.option("--stac", "stac_item", type=click.Path(dir_okay=False, path_type=Path),
              help="Local STAC Item whose assets are the S1/S2 scenes (instead of --sar/--ms; "
                   "--modality picks one of them).")
@click.option("--modality", help="Branch for --scene or --stac (or an ambiguous checkpoint).")
@click.option("--fuse", is_flag=True,
              help="With several scenes: average the branches' class probabilities.")
@_input_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Land-cover GeoTIFF to write (.qml and .legend.json go beside it).")
@_setting_options
@_no_progress_option("No progress bar.")
@_json_option("Print the summary as JSON.")
def predict(checkpoint: Path, trusted: bool, sar: tuple[Path | str, ...],
            sar_vv: Path | str | None, sar_vh: Path | str | None, ms: tuple[Path | str, ...],
            scene: tuple[Path | str, ...],
            stac_item: Path | None, modality: str | None, fuse: bool, bands: tuple[str, ...],
            sar_units: str | None, sar_db: bool, ms_scale: float, ms_offset: float,
            crs: str | None, nodata: tuple[str, ...], output: Path, no_progress: bool,
            as_json: bool, **settings: Any) -> None:
    """Map land cover from whichever modality's scene is available to a GeoTIFF.

    Every scene is first checked against the model's training data (units, scale, band
    order; see the inspect command). Worked examples: "Your own scenes" in the README.
    The mapping options are those of discomkd_geo.inference.settings.MapSettings.
    """
    from .constants import MS, SAR

    scenes: dict[str, list[Path | str]] = {}
    source = None
    if stac_item is not None:
        if ms or sar or sar_vv or sar_vh or scene:
            raise click.UsageError("--stac replaces --sar, --ms and --scene")
        from .inference.stac import read_item

        source = read_item(stac_item)
        scenes = {m: [_SCENE.convert(f, None, None) for f in files]
                  for m, files in source.paths.items() if modality in (None, m)}
        if not scenes:
            raise click.UsageError(f"{stac_item} has no {modality} asset")
        # The Item names the bands; an explicit --bands still wins.
        bands = tuple(f"{m}={','.join(source.bands[m])}" for m in scenes) + bands
    if ms:
        scenes[MS] = list(ms)
    if sar_vv or sar_vh:
        if not (sar_vv and sar_vh) or sar:
            raise click.UsageError("give both --sar-vv and --sar-vh (and no --sar)")
        scenes[SAR] = [sar_vv, sar_vh]
        bands = (*bands, f"{SAR}=VV,VH")
    elif sar:
        scenes[SAR] = list(sar)
    if scene:
        if modality is None:
            raise click.UsageError("--scene needs --modality")
        scenes[modality] = list(scene)
    if not scenes:
        raise click.UsageError("give a scene: --sar, --ms or --scene with --modality")
    if len(scenes) > 1 and not fuse:
        raise click.UsageError("several scenes given: add --fuse to average the branches")
    inputs = _scene_inputs(scenes, bands, sar_units, sar_db, ms_scale, ms_offset, crs, nodata)
    from .inference.engine import predict_to_file
    from .models.loader import load_predictor

    options = _map_settings(settings)  # checked before the checkpoint is loaded
    predictors = {m: load_predictor(checkpoint, m, trusted=trusted) for m in scenes}
    summary = predict_to_file(predictors, inputs, output, options,
                              progress=not (no_progress or as_json), stac_source=source)
    if as_json:
        import json

        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    for check in summary.checks.values():
        if check.forced:
            click.echo(f"warning: mapped with --force: {cli_words(check.problems[0])}",
                       err=True)
    click.echo(f"{summary.output}: {summary.width} x {summary.height} px "
               f"({', '.join(summary.modalities)}, stride {summary.stride}) in "
               f"{summary.seconds:.1f} s, {summary.pixels_per_s:,.0f} px/s")
    mapped = max(summary.mapped_pixels, 1)
    for name, count in summary.histogram.items():
        if count:
            click.echo(f"  {name:<22} {count:>12,} px  {count / mapped:6.1%}")
    click.echo(f"  {'(nodata)':<22} {summary.pixels - summary.mapped_pixels:>12,} px")
    if summary.computed_chunks < summary.chunks:
        click.echo(f"area of interest: {summary.computed_chunks} of {summary.chunks} chunks "
                   "read and classified")
    if summary.vector:
        click.echo(f"polygons: {summary.vector}")


main.add_command(predict)


# --------------------------------------------------------------------------- inspect
@main.command()
@click.argument("scene", nargs=-1, required=True, type=_SCENE)
@_checkpoint_option(exists=True)
@click.option("--modality", help="Branch the scene is for (needed for training checkpoints).")
@_input_options
@_json_option("Print the figures as JSON.")
def inspect(scene: tuple[Path | str, ...], checkpoint: Path, trusted: bool,
            modality: str | None,
            bands: tuple[str, ...], sar_units: str | None, sar_db: bool, ms_scale: float,
            ms_offset: float, crs: str | None, nodata: tuple[str, ...], as_json: bool) -> None:
    """Compare a scene's bands with the model's training data, as predict checks them.

    SCENE is one raster, one file per band or polarisation, or a directory of them.
    Prints per band the unit guess, the scene's and the training data's 2nd/50th/98th
    percentiles and the verdict, then whether predict would map the scene.
    """
    from .inference.checks import check_scene
    from .inference.io import open_readers
    from .models.loader import load_predictor

    predictor = load_predictor(checkpoint, modality, trusted=trusted)
    modality = predictor.info.modality
    inputs = _scene_inputs({modality: list(scene)}, bands, sar_units, sar_db, ms_scale,
                           ms_offset, crs, nodata)
    _, readers = open_readers(inputs, {modality: predictor.info})
    check = check_scene(predictor, readers[modality], modality)
    if as_json:
        import json

        click.echo(json.dumps(check.to_dict(), indent=2))
        return
    click.echo(f"{check.source}: {modality}, {check.units}; {check.sampled_pixels:,} px "
               f"sampled, {check.valid_share:.0%} valid")
    click.echo(f"{'band':<6} {'unit guess':<44} {'scene p2/p50/p98':>26}   "
               f"{'training p2/p50/p98':>26}  verdict")
    for band in check.bands:
        training = "(none in checkpoint)" if band.training is None else "/".join(
            f"{v:.4g}" for v in band.training)
        click.echo(f"{band.band:<6} {band.unit_guess:<44} "
                   f"{'/'.join(f'{v:.4g}' for v in band.scene):>26}   {training:>26}  "
                   f"{band.verdict}")
    if check.problems:
        click.echo(f"predict refuses this scene: {cli_words(check.problems[0])}")
    else:
        click.echo("predict maps this scene")


# --------------------------------------------------------------------------- qgis
@main.group(cls=_Group)
def qgis() -> None:
    """The QGIS Processing plugin: install it into a profile, or zip it."""


_executable_option = click.option(
    "--executable", help="The discomkd-geo the plugin runs [default: this environment's].")


@qgis.command("install")
@click.option("--profile-dir", type=click.Path(file_okay=False, path_type=Path),
              help="QGIS profile [default: the 'default' profile of this system's QGIS 3].")
@_executable_option
@_overwrite_option("Replace an installed copy (upgrade).")
def qgis_install(profile_dir: Path | None, executable: str | None, overwrite: bool) -> None:
    """Write the plugin into a QGIS profile and enable it (restart QGIS to load it)."""
    from .qgis import find_executable, install

    executable = executable or find_executable()
    target = install(profile_dir, executable, overwrite=overwrite)
    click.echo(f"{target}: plugin installed and enabled; its algorithms run {executable}")


@qgis.command("package")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_executable_option
@_overwrite_option("Replace OUTPUT if it exists.")
def qgis_package(output: Path, executable: str | None, overwrite: bool) -> None:
    """Zip the plugin for QGIS's plugin manager (Install from ZIP)."""
    from .qgis import package

    package(output, executable, overwrite=overwrite)
    click.echo(f"{output}: QGIS plugin; install it with Plugins > Manage and Install "
               "Plugins > Install from ZIP")


@click.group("discomkd", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def rio_discomkd(ctx: click.Context) -> None:
    """DisCoM-KD land-cover mapping (the discomkd-geo commands as a rio plugin)."""
    from .logs import configure

    configure((ctx.obj or {}).get("verbosity", 0))  # rio's own -v/-q
    _interruptible()


rio_discomkd.add_command(predict)


# --------------------------------------------------------------------------- GIS chains
def _area(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--mmu`` as square metres (``0.5ha``, ``5000m2``, ``5000``)."""
    if value is None:
        return None
    from .inference.settings import parse_area

    try:
        return parse_area(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _mmu_option(command: F) -> F:
    """``--mmu`` of ``vectorize``, with the help of predict's ``mmu`` setting."""
    from .inference.settings import setting_fields

    [field] = [f for f in setting_fields() if f.name == "mmu"]
    return click.option("--mmu", callback=_area, metavar=field.metavar,
                        help=field.help)(command)


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="GeoPackage to write (.gpkg; also .geojson, .fgb); OUTPUT_STEM.qml beside it.")
@_mmu_option
@click.option("--layer", help="Layer name [default: the output's stem].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def vectorize(map_path: Path, output: Path, mmu: float | None, layer: str | None,
              overwrite: bool) -> None:
    """Polygons of a land-cover map: one feature per connected region.

    Attributes: class_code, class_name, color, area_m2, area_ha (areas on an equal-area
    projection when the map's CRS is geographic). A QGIS style goes beside the file.
    """
    from .inference.vectorize import vectorize_to_file

    frame = vectorize_to_file(map_path, output, mmu=mmu, layer=layer, overwrite=overwrite)
    click.echo(f"{output}: {len(frame):,} polygons, {frame['area_ha'].sum():,.2f} ha"
               + (f" (MMU {mmu:g} m2)" if mmu else ""))


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("zones", metavar="ZONES[:LAYER]")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Table to write: .csv, or .gpkg (with the zones' geometries).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@_no_progress_option("No progress bar.")
def zonal(map_path: Path, zones: str, output: Path, overwrite: bool, no_progress: bool) -> None:
    """Area of each class per zone (ha and % of the zone), nodata share, zone attributes.

    ZONES is any vector file geopandas reads, in any CRS (FILE:LAYER names a layer). A
    pixel counts for a zone when its centre lies inside it.
    """
    from .inference.zonal import zonal_to_file

    table = zonal_to_file(map_path, zones, output, overwrite=overwrite,
                          progress=not no_progress)
    click.echo(f"{output}: {len(table):,} zones")

"""Give a trained run's branches a per-pixel decoder, trained alone on mosaics and patches.

The two-stage recipe (``model.decoder_epochs``, ``discomkd-geo fit-decoder``): the run's
encoders and heads are trained as usual on isolated patches, so the isolated-patch scores
stay exactly those of the run, then frozen; only the decoder
(:mod:`discomkd_geo.models.decoder`) learns, from the per-pixel label maps of mosaics
(:mod:`discomkd_geo.data.mosaic`) drawn from the run's own training split, normalised with
the run's statistics, and from the isolated training patches, every pixel labelled with
its patch's class. Batch normalisation layers stay in evaluation mode, so the frozen
branch computes exactly what it computes when mapping.

Why the isolated patches too: a mosaic is nearly all boundary (four classes in 96 px),
while most of a scene lies inside a parcel. Trained on mosaics alone the decoder learned
to expect a change of class everywhere and invented some inside parcels (demo model, SAR:
OA of the pixels whose 64 px neighbourhood holds one class 0.76 against 0.88 for dense
mode); with the patches it stays with the context there (0.77 on the demo scene, held-out
scenes 0.861 vs 0.849, overall OA +2.5 and +1.5 points; measured with a full batch of
patches per step, one patch per mosaic since, at half the cost). The branch with its decoder is
saved as ``RUN/decoders/<modality>.pt`` (a predictor file,
:meth:`~discomkd_geo.models.predictor.Predictor.save`), which the run directory then loads
(:func:`~discomkd_geo.models.predictor.run_checkpoint`) and which maps in mode ``pixel``.

Measured against the one-stage alternative (``data.mosaic`` + ``model.decoder``: every
DisCoM-KD term computed per mosaic region, decoder trained jointly), which lowered the
SAR branch's isolated-patch F1 by 8 points and its maps with it (``benchmarks/results.json``,
``maps.runs.mosdec-s0``).
"""

import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig, load_config
from ..data.bandstats import BandStats
from ..data.datamodule import MSSARDataModule
from ..data.mosaic import PATCHES
from ..errors import CheckpointError, ConfigError
from ..files import check_writable
from ..logs import log
from ..models.branches import build_branch, pixel_logits
from ..models.layout import channels_last
from ..models.predictor import RUN_DECODERS, Predictor, load_torch_predictor
from .baselines import FUSED


def with_decoder(predictor: Predictor) -> Predictor:
    """The predictor's branch with a new (untrained) decoder, every other weight frozen.

    Raises:
        CheckpointError: the branch already has a decoder.
    """
    if predictor.has_decoder:
        raise CheckpointError(f"this {predictor.info.modality} model already has a decoder")
    spec = {**predictor.info.branch_spec, "decoder": True}
    branch = build_branch(**spec)
    missing, unexpected = branch.load_state_dict(predictor.branch.state_dict(), strict=False)
    if unexpected or not all(k.startswith("decoder.") for k in missing):
        raise CheckpointError(f"the {predictor.info.modality} branch does not match its spec")
    branch.requires_grad_(False)
    branch.decoder.requires_grad_(True)
    info = replace(predictor.info, branch_spec=spec)
    return Predictor(branch, predictor.stats, info).eval()


def _endless(loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The loader's batches, pass after pass (each pass draws anew)."""
    while True:
        yield from loader


def _pixel_loss(predictor: Predictor, images: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the per-pixel logits against ``(B, H, W)`` labels."""
    logits = pixel_logits(predictor.branch, channels_last(images), predictor.info.patch_size)
    return F.cross_entropy(logits, labels)


def _fit(predictor: Predictor, mosaics: MSSARDataModule, patches: MSSARDataModule,
         epochs: int, lr: float) -> float:
    """Train ``predictor``'s decoder; the last epoch's mean loss.

    Every step adds the loss on a batch of training mosaics (their label maps) and on as
    many isolated training patches (their class at every pixel): one per mosaic, which
    holds four.
    """
    m = predictor.info.modality
    optimizer = torch.optim.Adam(predictor.branch.decoder.parameters(), lr=lr)
    # Made once: their samplers draw anew every epoch.
    mosaic_loader, patch_loader = mosaics.train_dataloader(), patches.train_dataloader()
    mean = float("nan")
    for epoch in range(epochs):
        total, steps = 0.0, 0
        for batch, single in zip(mosaic_loader, _endless(patch_loader), strict=False):
            batch = mosaics.preprocess(batch, augment=True)
            single = patches.preprocess(single, augment=True)
            image = single[f"image_{m}"]
            uniform = single[f"label_{m}"][:, None, None].expand(-1, *image.shape[-2:])
            loss = (_pixel_loss(predictor, batch[f"image_{m}"], batch[f"mask_{m}"])
                    + _pixel_loss(predictor, image, uniform))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        mean = total / max(steps, 1)
        log.info("%s decoder epoch %d/%d: pixel loss %.4f", m, epoch + 1, epochs, mean)
    return mean


def decoder_modalities(model: ModelConfig, modalities: list[str],
                       predictable: list[str]) -> list[str]:
    """The branches ``model.decoder_epochs`` gives a decoder (``model.decoder_modalities``).

    Those of the named modalities that have a single-modality branch: a method without
    one (the late-fusion teacher a ``compare`` trains for ``kd``) gets none, so one
    config serves every method.

    Args:
        model: the model settings.
        modalities: the run's modalities (its data's).
        predictable: those with a single-modality branch.

    Raises:
        ConfigError: a named modality is not one of the run's (a typo, say).
    """
    if model.decoder_modalities is None:
        return predictable
    if wrong := sorted(set(model.decoder_modalities) - set(modalities)):
        raise ConfigError("model.decoder_modalities",
                          f"no {', '.join(wrong)} modality in this run; choose from "
                          f"{', '.join(modalities)}")
    return [m for m in predictable if m in model.decoder_modalities]


def run_modalities(run_dir: str | Path) -> list[str]:
    """The modalities a run has a single-modality best checkpoint for.

    Raises:
        CheckpointError: none (not a run directory, or a late-fusion teacher's run).
    """
    found = sorted(p.name.removeprefix("best-").removesuffix(".ckpt")
                   for p in (Path(run_dir) / "checkpoints").glob("best-*.ckpt"))
    found = [m for m in found if m != FUSED]
    if not found:
        raise CheckpointError(f"{run_dir}: no single-modality best checkpoint "
                              "(checkpoints/best-<modality>.ckpt)")
    return found


def fit_decoders(run_dir: str | Path, out_dir: str | Path | None, modalities: list[str],
                 epochs: int = 8, lr: float = 1e-3,
                 overwrite: bool = False) -> dict[str, Path]:
    """Train a decoder for each modality's frozen branch of a run; save the predictors.

    Args:
        run_dir: a training run directory (its ``config.yaml``, statistics and best
            checkpoints).
        out_dir: where ``<modality>.pt`` predictor files are written; ``None``: the run's
            ``decoders/`` directory, which the run directory then loads.
        modalities: the branches to give a decoder.
        epochs: passes over the run's training split, drawn as mosaics.
        lr: Adam learning rate of the decoder.
        overwrite: replace existing predictor files.

    Returns:
        The written predictor file per modality.

    Raises:
        OutputExistsError: a predictor file exists and ``overwrite`` is false (checked
            before any training).
        CheckpointError: the run's statistics file differs from its checkpoint's.
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / RUN_DECODERS if out_dir is None else Path(out_dir)
    targets = {m: out_dir / f"{m}.pt" for m in modalities}
    for target in targets.values():
        check_writable(target, overwrite)
    config = load_config(run_dir / "config.yaml", ["data.mosaic=false"])
    # The run's own statistics (RUN/stats/<m>.json): the frozen branches learnt on data
    # normalised with them, and a pass over the split to compute them again cost the demo
    # half its decoder time.
    stats = {p.stem: BandStats.load_json(p) for p in (run_dir / "stats").glob("*.json")}
    mosaics = MSSARDataModule(replace(config.data, mosaic=True), seed=config.seed, stats=stats)
    mosaics.setup()
    # One isolated patch per mosaic: a quarter of the batch (see _fit).
    single = replace(config.data, batch_size=max(2, config.data.batch_size // PATCHES))
    patches = MSSARDataModule(single, seed=config.seed, stats=mosaics.stats)
    patches.setup()
    torch.manual_seed(config.seed)
    for modality, target in targets.items():
        best = run_dir / "checkpoints" / f"best-{modality}.ckpt"
        predictor = with_decoder(load_torch_predictor(best, modality))
        if mosaics.stats[modality].to_dict() != predictor.stats.to_dict():
            raise CheckpointError(f"{run_dir}: stats/{modality}.json differs from the "
                                  f"statistics of checkpoints/best-{modality}.ckpt")
        start = time.perf_counter()
        loss = _fit(predictor, mosaics, patches, epochs, lr)
        log.info("%s decoder: %d epoch%s in %.0f s, final pixel loss %.4f", modality, epochs,
                 "s" * (epochs != 1), time.perf_counter() - start, loss)
        out_dir.mkdir(parents=True, exist_ok=True)
        predictor.save(target, overwrite=overwrite)
    return targets

"""Give a trained run's branches a per-pixel decoder, trained alone on mosaics.

The two-stage alternative to ``data.mosaic`` + ``model.decoder`` training: the run's
encoders and heads are trained as usual on isolated patches (so the isolated-patch scores
stay exactly those of the run), then frozen; only the decoder
(:mod:`discomkd_geo.models.decoder`) learns, from the per-pixel label maps of mosaics
drawn from the run's own training split, normalised with the run's statistics. Batch
normalisation layers stay in evaluation mode, so the frozen branch computes exactly what
it computes when mapping. The result per modality is a predictor file
(:meth:`~discomkd_geo.models.predictor.Predictor.save`) that maps in mode ``pixel``.
"""

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import load_config
from ..data.datamodule import MSSARDataModule
from ..errors import CheckpointError
from ..logs import log
from ..models.branches import build_branch, pixel_logits
from ..models.predictor import Predictor, load_predictor


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


def fit_decoders(run_dir: str | Path, out_dir: str | Path, modalities: list[str],
                 epochs: int = 4, lr: float = 1e-3, overwrite: bool = False) -> dict[str, Path]:
    """Train a decoder for each modality's frozen branch of a run; save the predictors.

    Args:
        run_dir: a training run directory (its ``config.yaml`` and best checkpoints).
        out_dir: where ``<modality>.pt`` predictor files are written.
        modalities: the branches to give a decoder.
        epochs: passes over the run's training split, drawn as mosaics.
        lr: Adam learning rate of the decoder.
        overwrite: replace existing predictor files.

    Returns:
        The written predictor file per modality.

    Raises:
        CheckpointError: the data's normalisation statistics differ from the run's.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = load_config(run_dir / "config.yaml", ["data.mosaic=true"])
    dm = MSSARDataModule(config.data, seed=config.seed)
    dm.setup()
    torch.manual_seed(config.seed)
    written = {}
    for modality in modalities:
        predictor = with_decoder(load_predictor(run_dir, modality))
        if dm.stats[modality].to_dict() != predictor.stats.to_dict():
            raise CheckpointError(f"{run_dir}: the {modality} statistics of its data differ "
                                  "from the run's")
        optimizer = torch.optim.Adam(predictor.branch.decoder.parameters(), lr=lr)
        loader = dm.train_dataloader()  # once: its samplers draw anew every epoch
        for epoch in range(epochs):
            total, steps = 0.0, 0
            for batch in loader:
                batch = dm.preprocess(batch, augment=True)
                logits = pixel_logits(predictor.branch, batch[f"image_{modality}"],
                                      predictor.info.patch_size)
                loss = F.cross_entropy(logits, batch[f"mask_{modality}"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            log.info("%s decoder epoch %d/%d: pixel loss %.4f", modality, epoch + 1, epochs,
                     total / max(steps, 1))
        out_dir.mkdir(parents=True, exist_ok=True)
        written[modality] = out_dir / f"{modality}.pt"
        predictor.save(written[modality], overwrite=overwrite)
    return written

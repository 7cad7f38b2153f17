"""Lightning tasks of the baselines DisCoM-KD is compared with.

Each is a :class:`~discomkd_geo.training.module.MultiModalTask`, so it trains through the
same DataModule, config, logging and self-describing checkpoints as DisCoM-KD, and its
students load with :func:`~discomkd_geo.load_predictor`:

* ``mono`` (:class:`MonoTask`): one supervised classifier per modality.
* ``teacher`` (:class:`TeacherTask`): late-fusion multi-modal classifier; scored as the
  ``fused`` head (``val/fused/f1_weighted``, checkpoint ``best-fused.ckpt``). It predicts
  from all modalities together, so it exports no single-modality predictor.
* ``kd`` (:class:`KDTask`): per-modality students trained with cross-entropy plus Hinton
  distillation from a trained, frozen teacher (``model.teacher``).
* ``dkd`` (:class:`DKDTask`): the same with Decoupled KD (Zhao et al., CVPR 2022).

The teacher and its students need the modalities of one sample together, so these three
require paired batches (``data.paired: true``); the comparison sets it for them.
"""

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..models._files import LOAD_ERRORS, load_error_message, load_torch_file
from ..models.baselines import LateFusionTeacher, MonoModal
from ..models.kd import dkd_loss, kd_loss
from ..models.predictor import CHECKPOINT_KEY
from .module import MultiModalTask

#: Name of the teacher's only head.
FUSED = "fused"


def _mono_model(task: MultiModalTask) -> MonoModal:
    mc = task.config.model
    return MonoModal({m: len(b) for m, b in task.modalities.items()}, len(task.classes),
                     backbone=mc.backbone, width=mc.width, padding=mc.padding,
                     weights=mc.weights)


def _require_paired(task: MultiModalTask) -> None:
    if not task.config.data.paired:
        raise ConfigError("data.paired", f"method {task.method!r} needs paired batches "
                                         "(a sample's modalities together); set it to true")


class MonoTask(MultiModalTask):
    """Mono-modal baseline: each modality's classifier trained alone with cross-entropy."""

    method = "mono"

    def build_model(self) -> nn.Module:
        """A :class:`~discomkd_geo.models.baselines.MonoModal` over the modalities."""
        return _mono_model(self)

    def compute_losses(self, images: dict[str, Tensor],
                       labels: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sum of the per-modality cross-entropies (each logged as ``cl_<m>``)."""
        logits = self.model(images)
        terms = {f"cl_{m}": F.cross_entropy(logits[m], labels[m]) for m in logits}
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}


class TeacherTask(MultiModalTask):
    """Late-fusion multi-modal teacher, selected on its fused validation weighted F1."""

    method = "teacher"

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        super().__init__(config, data_info)
        _require_paired(self)

    def build_model(self) -> nn.Module:
        """A :class:`~discomkd_geo.models.baselines.LateFusionTeacher`."""
        mc = self.config.model
        return LateFusionTeacher({m: len(b) for m, b in self.modalities.items()},
                                 len(self.classes), backbone=mc.backbone, width=mc.width,
                                 padding=mc.padding, weights=mc.weights)

    @property
    def predictable_modalities(self) -> list[str]:
        """None: the teacher needs every modality of a sample."""
        return []

    @property
    def heads(self) -> list[str]:
        """The fused multi-modal prediction only."""
        return [FUSED]

    def head_logits(self, images: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fused logits from all modalities."""
        return {FUSED: self.model(images)}

    def compute_losses(self, images: dict[str, Tensor],
                       labels: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy of the fused prediction (paired labels: any modality's)."""
        target = next(iter(labels.values()))
        cl = F.cross_entropy(self.model(images), target)
        return {"loss": cl, "cl": cl}


def load_teacher(path: str | Path, modalities: dict[str, list[str]],
                 classes: list[str]) -> LateFusionTeacher:
    """The frozen network of a trained ``teacher`` run, checked against the students' data.

    Args:
        path: a ``teacher`` run directory or its ``best-fused.ckpt``.
        modalities: the students' bands per modality (the teacher must read the same).
        classes: the students' classes, in logit order.

    Raises:
        CheckpointError: missing or unreadable file, not a teacher, or other bands/classes.
        UntrustedFileError: the file would run code on load (a teacher is always read
            weights-only: runs of this package never need more).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / f"best-{FUSED}.ckpt"
    try:
        ckpt = load_torch_file(path)  # what training writes loads without trust
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: teacher checkpoint not found") from err
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{path}: cannot read teacher checkpoint: "
                              f"{load_error_message(err)}") from err
    if not isinstance(ckpt, dict) or ckpt.get(CHECKPOINT_KEY, {}).get("method") != "teacher":
        raise CheckpointError(f"{path}: not a checkpoint of a 'teacher' run")
    hparams = ckpt["hyper_parameters"]
    info = hparams["data_info"]
    if info["modalities"] != modalities or list(info["classes"]) != list(classes):
        raise CheckpointError(f"{path}: the teacher was trained on bands {info['modalities']} "
                              f"and classes {info['classes']}, the students on {modalities} "
                              f"and {classes}")
    teacher = TeacherTask(hparams["config"], info)
    teacher.load_state_dict(ckpt["state_dict"])
    network = teacher.model.eval()
    network.requires_grad_(False)
    return network


class KDTask(MultiModalTask):
    """Per-modality students distilled from a frozen late-fusion teacher (Hinton KD).

    Loss per modality: ``CE(student, y) + loss.kd_alpha * KD(student, teacher)`` at
    temperature ``loss.kd_temperature``. The teacher (``model.teacher``) is stored in the
    checkpoint with the students, so a checkpoint reloads without it.
    """

    method = "kd"

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        super().__init__(config, data_info)
        _require_paired(self)
        if self.config.model.teacher is None:
            raise ConfigError("model.teacher", f"method {self.method!r} needs a trained "
                                               "teacher run (train method 'teacher' first)")
        self.teacher = load_teacher(self.config.model.teacher, self.modalities, self.classes)

    def build_model(self) -> nn.Module:
        """The students: a :class:`~discomkd_geo.models.baselines.MonoModal`."""
        return _mono_model(self)

    def train(self, mode: bool = True) -> "KDTask":
        """Switch the students' mode; the frozen teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def distillation(self, student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
        """Weighted distillation term of one student."""
        lc = self.config.loss
        return lc.kd_alpha * kd_loss(student, teacher, lc.kd_temperature)

    def compute_losses(self, images: dict[str, Tensor],
                       labels: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy plus distillation per student; logs ``cl_<m>`` and ``kd_<m>``."""
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.model(images)
        terms: dict[str, Tensor] = {}
        for m, s in logits.items():
            terms[f"cl_{m}"] = F.cross_entropy(s, labels[m])
            terms[f"kd_{m}"] = self.distillation(s, teacher_logits, labels[m])
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}


class DKDTask(KDTask):
    """Per-modality students distilled with Decoupled KD (Zhao et al., CVPR 2022).

    Loss per modality: ``CE + loss.dkd_alpha * TCKD + loss.dkd_beta * NCKD`` at
    temperature ``loss.kd_temperature`` (the paper's defaults: 1, 8, 4).
    """

    method = "dkd"

    def distillation(self, student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
        """DKD term of one student."""
        lc = self.config.loss
        return dkd_loss(student, teacher, target, alpha=lc.dkd_alpha, beta=lc.dkd_beta,
                        temperature=lc.kd_temperature)

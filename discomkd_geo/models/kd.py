"""Logit distillation losses of the teacher/student baselines DisCoM-KD is compared with.

Used by :mod:`discomkd_geo.training.baselines` to distil a multi-modal late-fusion
teacher into single-modality students:

* :func:`kd_loss`: Hinton et al. (2015), KL divergence between temperature-softened
  teacher and student distributions, scaled by ``T**2`` so its gradients keep their size
  whatever the temperature.
* :func:`dkd_loss`: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), which splits
  the KD term into a target-class part (TCKD: the binary target / non-target
  distribution) and a non-target-class part (NCKD: the distribution among the other
  classes) and weights them separately, as the authors' ``mdistiller`` code does.

Both return the mean over the batch.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Args:
        student_logits: ``(B, K)`` student logits.
        teacher_logits: ``(B, K)`` teacher logits (no gradient flows into them).
        temperature: softmax temperature ``T``.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _binary_log_probs(log_p: Tensor, target_mask: Tensor) -> Tensor:
    """``(B, 2)`` log-probabilities of "target class" and "any other class"."""
    log_target = (log_p * target_mask).sum(dim=1)
    log_other = log_p.masked_fill(target_mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([log_target, log_other], dim=1)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float,
             beta: float, temperature: float) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, batch mean.

    TCKD is the ``T^2``-scaled KL divergence between the teacher's and the student's
    binary distributions (target class vs. all others); NCKD is the ``T^2``-scaled KL
    divergence between their distributions over the non-target classes only (softmax
    with the target class removed). Computed in log space, without the reference code's
    ``-1000`` masking trick, so it stays finite at any logit scale.

    Args:
        student_logits: ``(B, K)`` student logits.
        teacher_logits: ``(B, K)`` teacher logits (no gradient flows into them).
        target: ``(B,)`` int64 class labels.
        alpha: TCKD weight (1.0 in the paper).
        beta: NCKD weight (8.0 in the paper for CIFAR-100 / ImageNet).
        temperature: softmax temperature ``T`` (4.0 in the paper).
    """
    teacher_logits = teacher_logits.detach()
    mask = F.one_hot(target, student_logits.shape[1]).bool()
    s = student_logits / temperature
    t = teacher_logits / temperature
    tckd = F.kl_div(_binary_log_probs(F.log_softmax(s, dim=1), mask),
                    _binary_log_probs(F.log_softmax(t, dim=1), mask),
                    reduction="batchmean", log_target=True)
    # Softmax over the non-target classes: the target logit removed (set to -inf).
    log_s_other = F.log_softmax(s.masked_fill(mask, float("-inf")), dim=1)
    log_t_other = F.log_softmax(t.masked_fill(mask, float("-inf")), dim=1)
    p_t_other = log_t_other.exp()
    # KL summed over the non-target classes only (the target entry is 0 * (-inf - -inf)).
    nckd = (p_t_other * (log_t_other - log_s_other)).masked_fill(mask, 0.0).sum(dim=1).mean()
    return (alpha * tckd + beta * nckd) * temperature**2

"""DisCoM-KD's five loss terms (Ienco & Fraga Dantas, 2024) and the orthogonality penalty.

:class:`DisCoMKDLoss` turns a :class:`~discomkd_geo.models.discomkd.DisCoMKDOutput` and
the labels into ``L = cl * L_cl + adv * L_adv + mod * L_mod + aux * L_aux + perp * L_perp``
and returns every term, so the training task logs them all (a term with weight 0, as in
the ablations, is still computed and logged).

Where we differ from the authors' public code (``tanodino/CMKD_Disentangle``), and why:

- **Modality targets** are integer modality ids (cross-entropy against the class index
  of the modality). The public code passes ``ones_like(logits)`` / ``zeros_like(logits)``
  as targets: float "probabilities" of the logits' shape that are not one-hot (all ones
  for one modality, all zeros for the other), so its L_adv and L_mod are not the
  modality classification the paper describes.
- **Orthogonality** defaults to the squared cosine (Bousmalis et al., 2016, Domain
  Separation Networks), which is zero exactly at orthogonality. The public code's mean
  *signed* cosine goes negative and so rewards anti-correlation; ``orthogonality="signed"``
  restores it for comparison. (Encoders ending in ReLU + pooling give non-negative
  features, where the signed and absolute variants coincide; the squared one still
  penalises small overlaps less and large ones more.)
- **Averaging over modalities**: each term is a per-sample mean within each modality,
  then a mean over the modalities. The public code concatenates both modalities' samples
  into one cross-entropy; that is the same number when every modality has the same batch
  size (the paper's setting), and with unequal (unpaired) batches ours keeps every
  modality's weight equal, and the scale of the loss independent of M.
- **Grouping**: L_mod is the sum of the two modality classifiers' losses (on ``z_inf``
  and ``z_irr``), L_aux the sum of the auxiliary classifier's losses on ``z_inv`` and
  ``z_inf``, L_perp the sum of the two penalties (``z_inf`` vs ``z_irr``, ``z_inf`` vs
  ``z_inv``); with all weights 1 the total is the paper's sum of the individual terms.

On mosaics (:mod:`discomkd_geo.data.mosaic`) every term is per region window and the
class targets are the windows' class shares (soft cross-entropy); branches with a decoder
add ``pixel``, the per-pixel cross-entropy against the mosaics' label maps (weight
``pixel``; not part of the paper).
"""

from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Orthogonality
from ..errors import ConfigError
from .discomkd import DisCoMKDOutput

#: Names of the loss terms, in the order they are summed.
TERMS = ("cl", "adv", "mod", "aux", "perp")
#: The decoder's term, present when the output has per-pixel logits.
PIXEL_TERM = "pixel"


def orthogonality_penalty(a: Tensor, b: Tensor, mode: Orthogonality = "squared") -> Tensor:
    """Mean over samples of a function of the cosine similarity of ``a[i]`` and ``b[i]``.

    Args:
        a: ``(B, E)`` embeddings.
        b: ``(B, E)`` embeddings.
        mode: ``squared`` (mean cos^2, zero only at orthogonality; the default),
            ``abs`` (mean ``|cos|``), or ``signed`` (mean cos, the public code's variant,
            which can go negative and is minimised by anti-correlated embeddings).

    Returns:
        A scalar tensor.

    Raises:
        ConfigError: unknown mode.
    """
    # At least float32: under mixed precision the embeddings may be half/bfloat16.
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    cos = (F.normalize(a.to(dtype), dim=1) * F.normalize(b.to(dtype), dim=1)).sum(dim=1)
    if mode == "squared":
        return cos.square().mean()
    if mode == "abs":
        return cos.abs().mean()
    if mode == "signed":
        return cos.mean()
    raise ConfigError("loss.orthogonality",
                      f"unknown mode {mode!r}; choose one of {', '.join(get_args(Orthogonality))}")


class DisCoMKDLoss(nn.Module):
    """The weighted DisCoM-KD objective; see the module docstring for the terms.

    - ``cl``: cross-entropy of each modality's task classifier on its labels.
    - ``adv``: cross-entropy of the discriminator (behind the GRL) on ``z_inv`` against
      the modality id; minimising it trains the discriminator, and the reversed gradient
      makes ``z_inv`` modality-invariant.
    - ``mod``: cross-entropy of the modality classifiers on ``z_inf`` and on ``z_irr``.
    - ``aux``: cross-entropy of the shared auxiliary classifier on ``z_inv`` and ``z_inf``.
    - ``perp``: orthogonality of ``z_inf`` to ``z_irr`` and of ``z_inf`` to ``z_inv``.

    Args:
        cl: weight of L_cl.
        adv: weight of L_adv.
        mod: weight of L_mod.
        aux: weight of L_aux.
        perp: weight of L_perp.
        orthogonality: penalty of L_perp (see :func:`orthogonality_penalty`).
        pixel: weight of the decoder's per-pixel cross-entropy (mosaics only).

    Raises:
        ConfigError: unknown orthogonality mode.
    """

    def __init__(self, cl: float = 1.0, adv: float = 1.0, mod: float = 1.0, aux: float = 1.0,
                 perp: float = 1.0, orthogonality: Orthogonality = "squared",
                 pixel: float = 1.0) -> None:
        super().__init__()
        if orthogonality not in get_args(Orthogonality):
            raise ConfigError("loss.orthogonality", f"unknown mode {orthogonality!r}; choose "
                              f"one of {', '.join(get_args(Orthogonality))}")
        self.weights = {"cl": cl, "adv": adv, "mod": mod, "aux": aux, "perp": perp,
                        PIXEL_TERM: pixel}
        self.orthogonality: Orthogonality = orthogonality

    def forward(self, output: DisCoMKDOutput, labels: dict[str, Tensor],
                masks: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Loss terms of one batch.

        Args:
            output: the model's output.
            labels: per modality of ``output``, ``(N_m,)`` int64 class labels, or
                ``(N_m, K)`` class shares (mosaic region windows).
            masks: per modality, ``(B_m, H, W)`` int64 label maps of the mosaics, for the
                per-pixel term of branches with a decoder.

        Returns:
            ``"loss"`` (the weighted sum, to optimise) and each unweighted term.
        """
        per_modality: dict[str, list[Tensor]] = {t: [] for t in (*TERMS, PIXEL_TERM)}
        for m, out in output.modalities.items():
            y = labels[m]
            modality = torch.full(out.adv_logits.shape[:1], out.index, dtype=torch.long,
                                  device=out.adv_logits.device)
            per_modality["cl"].append(F.cross_entropy(out.logits, y))
            per_modality["adv"].append(F.cross_entropy(out.adv_logits, modality))
            per_modality["mod"].append(F.cross_entropy(out.mod_inf_logits, modality)
                                       + F.cross_entropy(out.mod_irr_logits, modality))
            per_modality["aux"].append(F.cross_entropy(out.aux_inv_logits, y)
                                       + F.cross_entropy(out.aux_inf_logits, y))
            per_modality["perp"].append(
                orthogonality_penalty(out.z_inf, out.z_irr, self.orthogonality)
                + orthogonality_penalty(out.z_inf, out.z_inv, self.orthogonality))
            if out.pixel_logits is not None and masks is not None:
                per_modality[PIXEL_TERM].append(F.cross_entropy(out.pixel_logits, masks[m]))
        terms = {t: torch.stack(v).mean() for t, v in per_modality.items() if v}
        loss = sum(self.weights[t] * v for t, v in terms.items())
        return {"loss": loss, **terms}

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        weights = ", ".join(f"{t}={w}" for t, w in self.weights.items())
        return f"{weights}, orthogonality={self.orthogonality!r}"

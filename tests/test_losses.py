"""DisCoM-KD loss terms against values computed by hand (numpy), and the orthogonality penalty."""

import numpy as np
import pytest
import torch

from discomkd_geo.errors import ConfigError
from discomkd_geo.models import DisCoMKDLoss, orthogonality_penalty
from discomkd_geo.models.discomkd import DisCoMKDOutput, ModalityOutput


def _ce(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy, written out: log-sum-exp minus the target logit."""
    lse = np.log(np.exp(logits).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _output(rng: np.random.Generator, sizes: dict[str, int], k: int = 3,
            e: int = 4) -> tuple[DisCoMKDOutput, dict[str, dict[str, np.ndarray]]]:
    m_count = len(sizes)
    raw, outs = {}, {}
    for index, (m, b) in enumerate(sizes.items()):
        arrays = {
            "logits": rng.normal(size=(b, k)), "adv_logits": rng.normal(size=(b, m_count)),
            "mod_inf_logits": rng.normal(size=(b, m_count)),
            "mod_irr_logits": rng.normal(size=(b, m_count)),
            "aux_inv_logits": rng.normal(size=(b, k)), "aux_inf_logits": rng.normal(size=(b, k)),
            "z_inv": rng.normal(size=(b, e)), "z_inf": rng.normal(size=(b, e)),
            "z_irr": rng.normal(size=(b, e)),
        }
        raw[m] = arrays
        outs[m] = ModalityOutput(index=index, **{n: torch.tensor(v) for n, v in arrays.items()})
    return DisCoMKDOutput(outs, m_count), raw


@pytest.mark.parametrize("sizes", [{"ms": 2, "sar": 2}, {"ms": 2, "sar": 3, "dem": 1}])
def test_each_term_against_hand_computed_values(sizes: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    output, raw = _output(rng, sizes)
    y = {m: rng.integers(0, 3, size=b) for m, b in sizes.items()}
    losses = DisCoMKDLoss(cl=1.0, adv=0.5, mod=2.0, aux=0.25, perp=3.0)(
        output, {m: torch.tensor(v) for m, v in y.items()})

    expected = {t: [] for t in ("cl", "adv", "mod", "aux", "perp")}
    for index, m in enumerate(sizes):
        r, d = raw[m], np.full(sizes[m], index)
        expected["cl"].append(_ce(r["logits"], y[m]))
        expected["adv"].append(_ce(r["adv_logits"], d))
        expected["mod"].append(_ce(r["mod_inf_logits"], d) + _ce(r["mod_irr_logits"], d))
        expected["aux"].append(_ce(r["aux_inv_logits"], y[m]) + _ce(r["aux_inf_logits"], y[m]))
        expected["perp"].append(np.mean(_cos(r["z_inf"], r["z_irr"]) ** 2)
                                + np.mean(_cos(r["z_inf"], r["z_inv"]) ** 2))
    means = {t: np.mean(v) for t, v in expected.items()}  # each modality weighs the same
    for t, v in means.items():
        assert losses[t].item() == pytest.approx(v, rel=1e-9), t
    total = means["cl"] + 0.5 * means["adv"] + 2 * means["mod"] + 0.25 * means["aux"] \
        + 3 * means["perp"]
    assert losses["loss"].item() == pytest.approx(total, rel=1e-9)


def test_modality_targets_are_integer_ids() -> None:
    """A discriminator that names every modality correctly has (almost) zero L_adv."""
    rng = np.random.default_rng(1)
    output, _ = _output(rng, {"a": 2, "b": 2, "c": 2})
    for o in output.modalities.values():
        confident = torch.full((2, 3), -20.0, dtype=torch.float64)
        confident[:, o.index] = 20.0
        o.adv_logits = o.mod_inf_logits = o.mod_irr_logits = confident
    labels = {m: torch.zeros(2, dtype=torch.long) for m in output.modalities}
    losses = DisCoMKDLoss()(output, labels)
    assert losses["adv"].item() < 1e-12 and losses["mod"].item() < 1e-12


def test_orthogonality_zero_for_orthogonal_inputs() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.5], [1.0, -1.0, 4.0]])
    for mode in ("squared", "abs", "signed"):
        assert orthogonality_penalty(a, b, mode).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonality_penalty(a, 2 * a).item() == pytest.approx(1.0)  # parallel: maximal


def test_orthogonality_variants_against_numpy() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    cos = _cos(a, b)
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert orthogonality_penalty(ta, tb, "squared").item() == pytest.approx(np.mean(cos ** 2))
    assert orthogonality_penalty(ta, tb, "abs").item() == pytest.approx(np.mean(np.abs(cos)))
    assert orthogonality_penalty(ta, tb, "signed").item() == pytest.approx(np.mean(cos))


def test_signed_variant_rewards_anticorrelation() -> None:
    """The public code's signed penalty is lowest for anti-parallel, not orthogonal, pairs."""
    a = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert orthogonality_penalty(a, -a, "signed").item() == pytest.approx(-1.0)
    assert orthogonality_penalty(a, a, "signed").item() == pytest.approx(1.0)
    assert orthogonality_penalty(a, -a, "squared").item() == pytest.approx(1.0)
    assert orthogonality_penalty(a, -a, "abs").item() == pytest.approx(1.0)


def test_unknown_orthogonality_names_the_key() -> None:
    with pytest.raises(ConfigError, match="loss.orthogonality.*cubic"):
        DisCoMKDLoss(orthogonality="cubic")
    with pytest.raises(ConfigError, match="loss.orthogonality"):
        orthogonality_penalty(torch.ones(1, 2), torch.ones(1, 2), "cubic")


def test_zero_weight_terms_are_still_reported() -> None:
    output, _ = _output(np.random.default_rng(3), {"a": 2, "b": 2})
    labels = {m: torch.tensor([0, 1]) for m in output.modalities}
    losses = DisCoMKDLoss(adv=0, mod=0, aux=0, perp=0)(output, labels)
    assert set(losses) == {"loss", "cl", "adv", "mod", "aux", "perp"}
    assert losses["loss"].item() == pytest.approx(losses["cl"].item())
    assert losses["perp"].item() > 0


def test_orthogonality_computed_in_float32_under_mixed_precision() -> None:
    a = torch.randn(4, 8).to(torch.bfloat16)
    b = torch.randn(4, 8).to(torch.bfloat16)
    penalty = orthogonality_penalty(a, b)
    assert penalty.dtype == torch.float32
    expected = np.mean(_cos(a.float().numpy(), b.float().numpy()) ** 2)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)

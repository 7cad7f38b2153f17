"""Mean-field smoothing: blotches join their parcel, boundaries and strong features stay."""

import torch

from discomkd_geo.inference.smoothing import smooth_probabilities, smoothing_reach

K = 4


def two_parcels(h: int = 64, w: int = 96) -> torch.Tensor:
    """Class 0 left of column 50, class 1 right of it, each at probability 0.7."""
    probs = torch.full((K, h, w), 0.1, dtype=torch.float64)
    probs[0, :, :50] = 0.7
    probs[1, :, 50:] = 0.7
    return probs


def smooth(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    valid = torch.ones(probs.shape[1:], dtype=torch.bool) if valid is None else valid
    return smooth_probabilities(probs, valid, strength=8.0, radius=16, passes=3)


def blotch(probs: torch.Tensor, rows: slice, cols: slice, p: float) -> torch.Tensor:
    """Class 2 at probability ``p`` over a patch, the rest shared by the other classes."""
    probs = probs.clone()
    probs[:, rows, cols] = (1 - p) / (K - 1)
    probs[2, rows, cols] = p
    return probs


def test_a_weak_blotch_joins_its_parcel_and_the_boundary_stays() -> None:
    probs = blotch(two_parcels(), slice(20, 30), slice(10, 20), 0.5)
    assert (probs.argmax(0)[20:30, 10:20] == 2).all()
    codes = smooth(probs).argmax(0)
    assert (codes[:, :50] == 0).all() and (codes[:, 50:] == 1).all()


def test_strong_evidence_survives() -> None:
    probs = blotch(two_parcels(), slice(None), slice(20, 22), 0.9999)  # a 2 px line
    codes = smooth(probs).argmax(0)
    assert (codes[:, 20:22] == 2).all() and (codes[:, :20] == 0).all()


def test_pixels_without_data_take_no_part() -> None:
    valid = torch.ones(64, 96, dtype=torch.bool)
    valid[:, :30] = False
    first = blotch(two_parcels(), slice(None), slice(0, 30), 0.99)
    second = blotch(two_parcels(), slice(None), slice(0, 30), 0.01)
    torch.testing.assert_close(smooth(first, valid)[:, :, 30:], smooth(second, valid)[:, :, 30:],
                               rtol=0, atol=1e-12)


def test_strength_zero_keeps_the_probabilities() -> None:
    probs = blotch(two_parcels(), slice(20, 30), slice(10, 20), 0.5)
    valid = torch.ones(probs.shape[1:], dtype=torch.bool)
    out = smooth_probabilities(probs, valid, strength=0.0, radius=16, passes=1)
    torch.testing.assert_close(out, probs)


def test_reach_bounds_what_a_pixel_sees() -> None:
    """Changing a pixel beyond the reach changes nothing (the reach is a bound: half of it
    is reached)."""
    reach = smoothing_reach(16, 3)
    probs = two_parcels(64, 2 * reach + 40)
    far = blotch(probs, slice(None), slice(-1, None), 0.99)
    near = blotch(probs, slice(None), slice(reach // 2, reach // 2 + 1), 0.99)
    base = smooth(probs)[:, :, 0]
    torch.testing.assert_close(smooth(far)[:, :, 0], base, rtol=0, atol=0)
    assert (smooth(near)[:, :, 0] - base).abs().max() > 0

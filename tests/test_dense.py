"""Dense (shared-computation) inference and the filling of invalid pixels."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference import make_predictor, read, texture, write_scene
from torch import Tensor, nn

from discomkd_geo.constants import CLASS_NODATA, S1_BANDS
from discomkd_geo.data.normalization import BandStats
from discomkd_geo.errors import CheckpointError
from discomkd_geo.inference.engine import FILL_RADIUS, predict_to_file, typical_values
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.inference.tiling import fill_invalid
from discomkd_geo.models.branches import build_branch
from discomkd_geo.models.predictor import Predictor


class Pointwise(nn.Module):
    """A 1x1-convolution encoder: no padding, no context, so dense == windows exactly."""

    out_features = 8
    receptive_field = 1

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 1), nn.Tanh())

    def stages(self) -> list[tuple[nn.Module, int]]:
        return [(self.features, 1)]

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


def pointwise_predictor() -> Predictor:
    predictor = make_predictor("sar", list(S1_BANDS))
    torch.manual_seed(0)
    predictor.branch.encoder = Pointwise(2)
    predictor.branch.head = nn.Linear(8, 10)
    with torch.no_grad():
        predictor.branch.head.weight.mul_(8.0)
    return predictor


@pytest.fixture(scope="module")
def holey_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 x 80 px SAR scene with a nodata corner and 2% scattered NaN pixels."""
    data = texture(2, 96, seed=11)[:, :, :80]
    data[:, :20, :24] = np.nan
    rng = np.random.default_rng(0)
    data[:, rng.random((96, 80)) < 0.02] = np.nan
    return write_scene(tmp_path_factory.mktemp("holey") / "sar.tif", data, list(S1_BANDS))


@pytest.mark.parametrize("coarse", [False, True])
def test_dense_equals_windows_for_an_encoder_without_padding(holey_scene: Path, tmp_path: Path,
                                                             coarse: bool) -> None:
    predictor = pointwise_predictor()
    probs = {}
    for mode in ("windows", "dense"):
        out = tmp_path / f"{mode}.tif"
        predict_to_file(predictor, holey_scene, out,
                        MapSettings.of(stride=4, coarse=coarse, mode=mode, block_size=32,
                                       probabilities=tmp_path / f"{mode}.p.tif"))
        probs[mode] = read(tmp_path / f"{mode}.p.tif")
        assert len(np.unique(read(out))) > 2
    np.testing.assert_allclose(probs["dense"], probs["windows"], atol=1e-6)
    assert (read(tmp_path / "dense.tif") == read(tmp_path / "windows.tif")).all()


@pytest.mark.parametrize("stride", [2, 4, 16])
def test_strides_below_the_encoder_stride_give_each_window_its_own_features(
        holey_scene: Path, tmp_path: Path, stride: int) -> None:
    """small_cnn pools by 8: windows at strides 2 and 4 come from shifted copies."""
    predictor = make_predictor("sar", list(S1_BANDS))
    halo = predictor.dense_halo()
    assert halo == 24  # half of small_cnn's 38 px receptive field, in whole 8 px cells
    predict_to_file(predictor, holey_scene, tmp_path / "c.tif",
                    MapSettings.of(stride=stride, coarse=True, mode="dense", block_size=32,
                                   probabilities=tmp_path / "c.p.tif"))
    coarse = read(tmp_path / "c.p.tif")
    assert coarse.shape == (10, -(-96 // stride), -(-80 // stride))
    # Window (i, j) alone, with the same halo of mirrored scene: the engine's value.
    data = read(holey_scene)
    valid = ~np.isnan(data).any(axis=0)
    data = fill_invalid(data, valid, typical_values(predictor), FILL_RADIUS)
    margin = (16 - stride) // 2 + halo
    padded = np.pad(data, ((0, 0), (margin, margin + 16), (margin, margin + 16)),
                    mode="reflect")
    i, j = 70 // stride, 56 // stride  # far from the nodata corner
    for a, b in ((i, j), (i + 1, j), (i, j + 1)):
        crop = padded[None, :, a * stride:a * stride + 16 + 2 * halo,
                      b * stride:b * stride + 16 + 2 * halo]
        with torch.no_grad():
            alone = predictor.dense(torch.from_numpy(np.ascontiguousarray(crop)), stride, halo)
        np.testing.assert_allclose(coarse[:, a, b], alone[0, 0, 0].numpy(), atol=1e-5)
    # A finer stride is a finer map: neighbouring cells differ.
    assert not np.allclose(coarse[:, i, j], coarse[:, i + 1, j])


@pytest.mark.slow
def test_dense_features_do_not_depend_on_the_surrounding_block() -> None:
    """Halo = half the receptive field: a window's features are those of the whole image."""
    torch.manual_seed(0)
    spec = {"kind": "discomkd", "in_channels": 2, "num_classes": 10, "backbone": "resnet18"}
    predictor = make_predictor("sar", list(S1_BANDS), patch=64, branch=build_branch(**spec))
    halo = predictor.dense_halo()
    assert halo == 224  # ResNet-18: 435 px receptive field, 32 px cells
    x = torch.randn(1, 2, 2 * halo + 64 + 16, 2 * halo + 64 + 16)
    with torch.no_grad():
        whole = predictor.dense(x, 16, halo)[0]
        for i, j in ((0, 1), (1, 0)):
            crop = x[:, :, 16 * i:16 * i + 64 + 2 * halo, 16 * j:16 * j + 64 + 2 * halo]
            alone = predictor.dense(crop, 16, halo)[0, 0, 0]
            torch.testing.assert_close(whole[i, j], alone, atol=1e-5, rtol=0)


def test_dense_mode_needs_an_encoder_with_stages(holey_scene: Path, tmp_path: Path) -> None:
    branch = nn.Sequential(nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 10))
    predictor = make_predictor("sar", list(S1_BANDS), branch=branch)
    with pytest.raises(CheckpointError, match="cannot run in dense mode"):
        predict_to_file(predictor, holey_scene, tmp_path / "x.tif", MapSettings.of(mode="dense"))
    assert list(tmp_path.iterdir()) == []


def test_invalid_pixels_take_their_valid_neighbours_mean() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2, 30, 30)).astype(np.float32)
    valid = rng.random((30, 30)) > 0.1
    valid[20:, 20:] = False  # a hole wider than the radius: its centre takes the fallback
    data[:, ~valid] = np.nan
    filled = fill_invalid(data, valid, np.array([7.0, 8.0]), radius=2)
    assert (filled[:, valid] == data[:, valid]).all()
    y, x = np.argwhere(~valid[:18, :18])[0]
    box = (slice(None), slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
    expected = np.nanmean(data[box], axis=(1, 2))
    np.testing.assert_allclose(filled[:, y, x], expected, rtol=1e-6)
    assert (filled[:, 25, 25] == [7.0, 8.0]).all()
    # A pixel's fill depends only on its neighbourhood: the same in any larger array.
    inner = fill_invalid(data[:, 5:25, 5:25], valid[5:25, 5:25], np.array([7.0, 8.0]), 2)
    assert (inner[:, 2:-2, 2:-2] == filled[:, 7:23, 7:23]).all()


@pytest.mark.parametrize("mode", ["windows", "dense"])
def test_scattered_nans_barely_change_the_map(tmp_path: Path, mode: str) -> None:
    """1% NaN pixels: the other pixels keep their class."""
    base = make_predictor("sar", list(S1_BANDS))
    stats = BandStats("percentile", list(S1_BANDS), [-4.0, -4.0], [8.0, 8.0])
    predictor = Predictor(base.branch, stats, base.info).eval()
    data = texture(2, 96, seed=12)
    clean = write_scene(tmp_path / "clean.tif", data, list(S1_BANDS))
    holes = np.random.default_rng(2).random((96, 96)) < 0.01
    data[:, holes] = np.nan
    holey = write_scene(tmp_path / "holey.tif", data, list(S1_BANDS))
    for name, scene in (("clean", clean), ("holey", holey)):
        predict_to_file(predictor, scene, tmp_path / f"{name}.map.tif",
                        MapSettings.of(stride=8, mode=mode))
    a, b = read(tmp_path / "clean.map.tif")[0], read(tmp_path / "holey.map.tif")[0]
    assert (b[holes] == CLASS_NODATA).all()
    assert (a[~holes] != b[~holes]).mean() < 0.03

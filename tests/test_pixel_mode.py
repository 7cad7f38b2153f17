"""The per-pixel mode: decoder output written block by block, the same bytes however run."""

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import torch
from rasterio.windows import Window
from shapely.geometry import box
from test_inference import CRS, MS_BANDS, ORIGIN, make_predictor, read, texture, write_scene

from discomkd_geo.constants import CLASS_NODATA, S1_BANDS
from discomkd_geo.errors import CheckpointError, SettingsError
from discomkd_geo.inference import engine
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.inference.smoothing import smooth_probabilities
from discomkd_geo.inference.tiling import chunk_layout
from discomkd_geo.models.branches import build_branch
from discomkd_geo.models.layout import class_softmax
from discomkd_geo.models.predictor import Predictor, load_torch_predictor

DATA = Path(__file__).parent / "data"


def pixel_predictor(padding: str = "zeros", modality: str = "sar") -> Predictor:
    """A DisCoM-KD branch with a decoder whose residual is not zero (untrained)."""
    torch.manual_seed(3)
    bands = list(S1_BANDS) if modality == "sar" else MS_BANDS
    spec = {"kind": "discomkd", "in_channels": len(bands), "num_classes": 10,
            "backbone": "small_cnn",
            "width": 4, "decoder": True, **({"padding": padding} if padding != "zeros" else {})}
    branch = build_branch(**spec)
    with torch.no_grad():
        branch.task_cls.weight.mul_(8.0)
        branch.decoder.residual[-1].weight.normal_(0, 0.5)
    predictor = make_predictor(modality, bands, branch=branch)
    predictor.info.branch_spec = spec  # what a saved file rebuilds the branch from
    return predictor


def write_pixel_scene(path: Path) -> Path:
    """A 100 x 92 px SAR scene with a nodata corner (edges not on blocks or cells)."""
    data = texture(2, 112, seed=5)[:, :100, :92]
    data[:, :12, :20] = np.nan
    return write_scene(path, data, list(S1_BANDS))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pixel_scene(tmp_path_factory.mktemp("pixel") / "sar.tif")


def assert_same_bytes_however_chunked(predictor: object, scene: Path, out: Path) -> None:
    """Map ``scene`` (mode auto, 32 px blocks) in 40 and 1024 px chunks on one worker and in
    24 px chunks on two: the maps and probabilities (``out/c40w1.tif``, ``.p.tif``, ...)
    must be the same bytes, in mode pixel."""
    runs = {"c40w1": {"chunk_size": 40}, "c1024w1": {"chunk_size": 1024},
            "c24w2": {"chunk_size": 24, "workers": 2}}
    for name, kwargs in runs.items():
        settings = MapSettings.of(mode="auto", block_size=32,
                                  probabilities=out / f"{name}.p.tif", **kwargs)
        summary = predict_to_file(predictor, scene, out / f"{name}.tif", settings)
        assert summary.mode == "pixel" and (summary.chunks > 1) == (name != "c1024w1")
    for suffix in (".tif", ".p.tif"):
        first, *others = [(out / f"{name}{suffix}").read_bytes() for name in runs]
        assert all(other == first for other in others), suffix


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
def test_pixel_mode_byte_identical_for_any_chunk_size_and_workers(scene: Path, tmp_path: Path,
                                                                  padding: str) -> None:
    assert_same_bytes_however_chunked(pixel_predictor(padding), scene, tmp_path)
    codes = read(tmp_path / "c40w1.tif")[0]
    probs = read(tmp_path / "c40w1.p.tif")
    assert (codes[:12, :20] == CLASS_NODATA).all() and (codes[12:, 20:] != CLASS_NODATA).all()
    valid = codes != CLASS_NODATA
    assert (probs.argmax(axis=0)[valid] == codes[valid]).all()
    assert len(np.unique(codes[valid])) >= 2


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
@pytest.mark.parametrize("smoothing", [0.0, 8.0])
def test_pixel_mode_equals_one_pass_over_the_scene(scene: Path, tmp_path: Path,
                                                   padding: str, smoothing: float) -> None:
    """A block's pixels are those of one pass over the (mirrored) scene: the halo suffices,
    for the decoder and for the smoothing (32 px blocks, smoothing reaching 24 px, 64 px
    chunks: each chunk's smoothing assembles its blocks' reach from the neighbouring
    blocks', in other chunks too; one misplaced would change the values near it)."""
    predictor = pixel_predictor(padding)
    summary = predict_to_file(predictor, scene, tmp_path / "p.tif", MapSettings.of(
        mode="pixel", block_size=32, chunk_size=64, smoothing=smoothing, smoothing_radius=4,
        smoothing_passes=2, probabilities=tmp_path / "p.p.tif"))
    assert summary.chunks == 4
    with torch.no_grad():
        raw = read(scene)
        valid = torch.from_numpy(~np.isnan(raw).any(axis=0))
        raw = np.where(np.isnan(raw), 0.0, raw).astype(np.float32)
        halo = predictor.pixel_halo()
        padded = np.pad(raw, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
        unsmoothed = predictor.pixels(torch.from_numpy(padded)[None], halo)[0].double()
        whole = smooth_probabilities(unsmoothed, valid, smoothing, 4, 2) if smoothing \
            else unsmoothed
    probs = read(tmp_path / "p.p.tif")
    # Away from the filled nodata corner (and the smoothing's reach of it), a pixel's
    # context is real scene only.
    corner = (slice(None), slice(60 + 24 * (smoothing > 0), None), slice(60, None))
    np.testing.assert_allclose(probs[corner], whole.numpy()[corner], atol=1e-5)
    if smoothing:  # the smoothing changed the map: the comparison above is not vacuous
        assert np.abs(unsmoothed.numpy()[corner] - probs[corner]).max() > 0.05


def test_fused_pixel_maps_smooth_the_fused_probabilities(tmp_path: Path) -> None:
    predictors = {"ms": pixel_predictor(modality="ms"), "sar": pixel_predictor()}
    scenes = {"ms": write_scene(tmp_path / "ms.tif", texture(len(MS_BANDS), 96, seed=5),
                                MS_BANDS),
              "sar": write_scene(tmp_path / "sar.tif", texture(2, 96, seed=6), list(S1_BANDS))}
    probs = {}
    runs = {"default": {}, "off": {"smoothing": 0.0}, "on": {"smoothing": 8.0}}
    for name, kwargs in runs.items():
        predict_to_file(predictors, scenes, tmp_path / f"{name}.tif", MapSettings.of(
            mode="pixel", fusion="average", probabilities=tmp_path / f"{name}.p.tif",
            **kwargs))
        probs[name] = read(tmp_path / f"{name}.p.tif")
    np.testing.assert_array_equal(probs["default"], probs["on"])
    # The smoothing acts once on the averaged probabilities (one block here).
    average = torch.from_numpy(probs["off"].astype(np.float64))
    expected = smooth_probabilities(average, torch.ones(96, 96, dtype=torch.bool), 8.0, 32, 3)
    np.testing.assert_allclose(probs["on"], expected.numpy(), atol=1e-5)
    assert np.abs(probs["on"] - probs["off"]).max() > 0.05


@pytest.mark.slow
def test_pixel_mode_same_bytes_on_a_distributed_cluster(scene: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    predictor = pixel_predictor()
    settings = MapSettings.of(mode="pixel", block_size=32)
    predict_to_file(predictor, scene, tmp_path / "local.tif", settings.replace(chunk_size=32))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        summary = predict_to_file(predictor, scene, tmp_path / "cluster.tif", settings.replace(
            chunk_size=64, scheduler=cluster.scheduler_address))
    assert summary.chunks == 4
    assert (tmp_path / "cluster.tif").read_bytes() == (tmp_path / "local.tif").read_bytes()


def aoi_20_50(path: Path) -> Path:
    """An area of interest holding the centres of pixel rows and columns 20-50."""
    x0, y0 = ORIGIN
    gpd.GeoDataFrame(geometry=[box(x0 + 200, y0 - 500, x0 + 500, y0 - 200)],
                     crs=CRS).to_file(path)
    return path


def count_model_runs(monkeypatch: pytest.MonkeyPatch) -> list[Window]:
    """The areas :func:`engine.pixel_probabilities` will run the model over, as it runs."""
    areas: list[Window] = []
    real = engine.pixel_probabilities

    def counted(*args: Any) -> Any:
        areas.append(args[-1])
        return real(*args)

    monkeypatch.setattr(engine, "pixel_probabilities", counted)
    return areas


def test_pixel_mode_computes_only_the_blocks_touching_the_area(
        scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--aoi``, unsmoothed pixel mode runs the 64 px blocks touching the area, as
    dense mode."""
    predictor = pixel_predictor()
    settings = MapSettings.of(mode="pixel", block_size=64, chunk_size=1024, smoothing=0.0)
    area = aoi_20_50(tmp_path / "aoi.geojson")  # in the first block only
    blocks = count_model_runs(monkeypatch)
    predict_to_file(predictor, scene, tmp_path / "whole.tif", settings)
    assert len(blocks) == 4  # 100 x 92 px in 64 px blocks
    blocks.clear()
    summary = predict_to_file(predictor, scene, tmp_path / "aoi.tif",
                              settings.replace(aoi=area))
    assert len(blocks) == 1 and summary.mapped_pixels == 30 * 30
    whole, part = read(tmp_path / "whole.tif")[0], read(tmp_path / "aoi.tif")[0]
    inside = np.zeros_like(whole, dtype=bool)
    inside[20:50, 20:50] = True
    assert (part[inside] == whole[inside]).all() and (part[~inside] == CLASS_NODATA).all()


def test_smoothed_pixel_mode_runs_the_model_once_per_block_within_reach_of_the_area(
        scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Smoothed, the model runs once over each 32 px block (its own halo only), with an
    area of interest over the blocks within the smoothing's reach (24 px) of the blocks
    touching it; inside the area the map is the whole map's, in files (two workers) and in
    a lazy array."""
    predictor = pixel_predictor()
    settings = MapSettings.of(mode="pixel", block_size=32, chunk_size=64, smoothing=8.0,
                              smoothing_radius=4, smoothing_passes=2)
    area = aoi_20_50(tmp_path / "aoi.geojson")  # blocks rows and columns 0-64
    areas = count_model_runs(monkeypatch)
    predict_to_file(predictor, scene, tmp_path / "whole.tif",
                    settings.replace(probabilities=tmp_path / "whole.p.tif"))
    blocks = chunk_layout(100, 92, 32)
    assert sorted(areas, key=str) == sorted(blocks, key=str)  # 4 x 3 blocks, each once
    areas.clear()
    predict_to_file(predictor, scene, tmp_path / "aoi.tif", settings.replace(
        aoi=area, workers=2, probabilities=tmp_path / "aoi.p.tif"))
    # Rows and columns 0-64 grown by 24 px reach the third block row and column, not the 4th.
    assert sorted(areas, key=str) == sorted((b for b in blocks if b.row_off < 96), key=str)
    whole, part = read(tmp_path / "whole.p.tif"), read(tmp_path / "aoi.p.tif")
    inside = np.zeros(whole.shape[1:], dtype=bool)
    inside[20:50, 20:50] = True
    np.testing.assert_array_equal(part[:, inside], whole[:, inside])
    assert np.isnan(part[:, ~inside]).all()
    lazy = engine.predict_lazy(predictor, scene, settings.replace(aoi=area),
                               what="probabilities")
    np.testing.assert_array_equal(lazy.values, part)


def test_decoder_predictor_loads_weights_only(tmp_path: Path) -> None:
    """A predictor with a decoder is plain tensors and values: no trust needed to load it."""
    predictor = pixel_predictor()
    predictor.save(tmp_path / "sar.pt")
    payload = torch.load(tmp_path / "sar.pt", weights_only=True)
    assert any(k.startswith("decoder.") for k in payload["state_dict"])
    loaded = load_torch_predictor(tmp_path / "sar.pt")
    assert loaded.has_decoder
    x = torch.from_numpy(texture(2, 128, seed=1))[None]
    halo = predictor.pixel_halo()
    torch.testing.assert_close(loaded.pixels(x, halo), predictor.pixels(x, halo))


def test_pixel_mode_refuses_a_model_without_decoder(scene: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no per-pixel decoder"):
        predict_to_file(make_predictor("sar", list(S1_BANDS)), scene, tmp_path / "m.tif",
                        MapSettings.of(mode="pixel"))
    assert not (tmp_path / "m.tif").exists()
    with pytest.raises(SettingsError, match="coarse"):
        predict_to_file(pixel_predictor(), scene, tmp_path / "m.tif",
                        MapSettings.of(mode="pixel", coarse=True))


def test_auto_mode_maps_a_model_without_decoder_in_windows_mode(scene: Path,
                                                                tmp_path: Path) -> None:
    predictor = make_predictor("sar", list(S1_BANDS))
    summary = predict_to_file(predictor, scene, tmp_path / "a.tif", MapSettings.of(mode="auto"))
    predict_to_file(predictor, scene, tmp_path / "w.tif", MapSettings.of(mode="windows"))
    assert summary.mode == "windows"
    assert (read(tmp_path / "a.tif") == read(tmp_path / "w.tif")).all()


def test_checkpoint_from_before_the_decoder_loads_and_maps_as_before(tmp_path: Path) -> None:
    """``tests/data/main_predictor.pt`` and its maps were written by the code on ``main``
    (before decoders existed); the same file maps to the same classes today."""
    predictor = load_torch_predictor(DATA / "main_predictor.pt")
    assert not predictor.has_decoder
    for mode in ("windows", "dense"):
        out = tmp_path / f"{mode}.tif"
        predict_to_file(predictor, DATA / "main_scene.tif", out,
                        MapSettings.of(mode=mode, device="cpu"))
        assert (read(out) == read(DATA / f"main_{mode}.tif")).all(), mode
    with pytest.raises(CheckpointError, match="no per-pixel decoder"):
        predict_to_file(predictor, DATA / "main_scene.tif", tmp_path / "p.tif",
                        MapSettings.of(mode="pixel"))


def test_class_softmax_is_the_same_for_any_number_of_threads() -> None:
    """Probabilities of channels-last pixel logits, as the decoder gives them: ATen's own
    softmax over dim 1 gave other last bits on 2, 3 or 4 threads for a few pixels (AVX-512
    kernels, or AVX2 on 3 and 4 threads); the class softmax never does."""
    logits = torch.randn(1, 10, 4, 28, generator=torch.Generator().manual_seed(0)) * 4
    logits = logits.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            results.append(class_softmax(logits, dim=1))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], other) for other in results[1:])
    torch.testing.assert_close(results[0], torch.softmax(logits, dim=1))
    assert results[0].shape == logits.shape


def test_a_runs_best_checkpoint_alone_maps_with_its_decoder(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``RUN/checkpoints/best-sar.ckpt`` named alone: mode auto meant windows where the run
    directory maps per pixel. It now takes the run's decoder, unless fit on other weights,
    which the log says."""
    from discomkd_geo.models.loader import load_predictor as load_any
    from discomkd_geo.models.predictor import CHECKPOINT_KEY
    from discomkd_geo.training.decoder_fit import with_decoder

    decoded = pixel_predictor()
    spec = {k: v for k, v in decoded.info.branch_spec.items() if k != "decoder"}
    plain = make_predictor("sar", list(S1_BANDS), branch=build_branch(**spec))
    plain.info.branch_spec = spec
    plain.branch.load_state_dict(decoded.branch.state_dict(), strict=False)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "decoders").mkdir()
    best = run / "checkpoints" / "best-sar.ckpt"

    def write_checkpoint(branch: torch.nn.Module) -> None:
        entry = {"info": plain.info.to_dict(), "stats": plain.stats.to_dict(),
                 "prefix": "branches.sar."}
        torch.save({CHECKPOINT_KEY: {"predictors": {"sar": entry}},
                    "state_dict": {f"branches.sar.{k}": v
                                   for k, v in branch.state_dict().items()}}, best)

    write_checkpoint(plain.branch)
    decoded.save(run / "decoders" / "sar.pt")
    assert not load_torch_predictor(best, "sar").has_decoder  # the checkpoint itself has none
    with caplog.at_level("DEBUG", logger="discomkd_geo"):
        alone = load_any(best, "sar")
    assert alone.has_decoder and caplog.messages == [
        f"{best}: with its run's per-pixel decoder ({run / 'decoders' / 'sar.pt'}), as the "
        "run directory loads it"]
    x = torch.rand(1, 2, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(alone.pixels(x, 0), load_any(run, "sar").pixels(x, 0),
                                   rtol=0, atol=0)
    # Trained on after fit-decoder: the decoder is not this checkpoint's.
    with torch.no_grad():
        plain.branch.task_cls.weight.add_(1.0)
    write_checkpoint(plain.branch)
    caplog.clear()
    with caplog.at_level("INFO", logger="discomkd_geo"):
        assert not load_any(best, "sar").has_decoder
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "was fit on other weights, so it is left out" in caplog.messages[0]
    assert with_decoder(load_torch_predictor(best, "sar")).has_decoder  # fit-decoder still can

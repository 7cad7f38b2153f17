"""Calibrated branches: temperature scaling fitted per branch, kept in every file, applied
to every probability; the ECE and reliability diagrams of evaluate; fit-calibration."""

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from test_pixel_mode import pixel_predictor, write_pixel_scene

from discomkd_geo.cli import main
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.layout import channels_last
from discomkd_geo.models.loader import load_predictor
from discomkd_geo.models.predictor import Predictor
from discomkd_geo.training.calibration import (
    ECE_BINS,
    FIT_METHODS,
    BranchCalibration,
    Reliability,
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    succession_temperature,
    tempered_probabilities,
)
from discomkd_geo.training.temperature_fit import file_temperature, run_files


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("true_t", [0.4, 2.5])
def test_fit_recovers_the_temperature_labels_were_drawn_with(true_t: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 10))
    probs = softmax(logits / true_t)
    labels = (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.03)
    assert fit_temperature(logits, labels) == fitted  # deterministic
    # The minimum of the NLL: a step either way costs.
    nll = negative_log_likelihood(logits, labels, fitted)
    assert nll < negative_log_likelihood(logits, labels, fitted * 1.05)
    assert nll < negative_log_likelihood(logits, labels, fitted / 1.05)


def test_fit_stops_at_the_bound_when_every_image_is_right() -> None:
    """Separable validation logits: the NLL falls all the way to T = 0."""
    logits = np.eye(10)[np.arange(50) % 10] * 3.0
    assert fit_temperature(logits, np.arange(50) % 10) == 0.05


def test_a_separable_split_gets_the_rule_of_succession() -> None:
    """No validation error: T makes the mean confidence (n + 1) / (n + 2), not 1 (the
    NLL's bound) nor the under-confident plain softmax."""
    rng = np.random.default_rng(1)
    labels = np.arange(150) % 10
    logits = rng.uniform(0, 3, (150, 10))
    logits[np.arange(150), labels] = 3.5  # every image right, with a margin
    assert fit_temperature(logits, labels) == 0.05
    temperature, method = choose_temperature(logits, labels)
    assert method == "succession" and method in FIT_METHODS
    assert temperature == succession_temperature(logits, labels)
    confidence = tempered_probabilities(logits, temperature).max(axis=1).mean()
    assert confidence == pytest.approx(151 / 152, abs=1e-9)
    assert tempered_probabilities(logits, None).max(axis=1).mean() < 0.9  # as trained
    # One mistake among 150: the NLL has its minimum, and it is used.
    wrong = logits.copy()
    wrong[0, labels[0]] -= 8.0
    temperature, method = choose_temperature(wrong, labels)
    assert method == "nll" and temperature == fit_temperature(wrong, labels) > 0.05


def test_succession_stops_at_the_bounds() -> None:
    """A match beyond the bounds: the nearer bound (chance-level logits never reach the
    target confidence; huge margins exceed it even at T = 20)."""
    labels = np.arange(20) % 10
    flat = np.zeros((20, 10))
    flat[np.arange(20), labels] = 1e-3
    assert succession_temperature(flat, labels) == 0.05
    assert succession_temperature(np.eye(10)[labels] * 1e4, labels) == 20.0


def test_ece_of_a_hand_computed_example() -> None:
    probs = np.array([[0.9, 0.1],    # right, bin (13/15, 14/15]
                      [0.92, 0.08],  # wrong, same bin: accuracy 0.5, confidence 0.91
                      [0.05, 0.95],  # wrong (the label is 0), confidence 0.95: bin 14
                      [0.62, 0.38],  # right, bin 9
                      [0.3, 0.7]])   # right, bin 10
    labels = np.array([0, 1, 0, 0, 1])
    expected = (2 * abs(0.5 - 0.91) + abs(0 - 0.95) + abs(1 - 0.62) + abs(1 - 0.7)) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    bins = Reliability.of(probs, labels)
    assert len(bins.counts) == ECE_BINS and bins.counts[13] == 2 and bins.counts.sum() == 5
    # Right-closed bins: a confidence of exactly 1 is in the last one.
    assert Reliability.of(np.array([[1.0, 0.0]]), np.array([0])).counts[-1] == 1


def calibrated(predictor: Predictor, temperature: float) -> Predictor:
    """The same branch, with a temperature."""
    return Predictor(predictor.branch, predictor.stats,
                     replace(predictor.info, temperature=temperature)).eval()


def test_probabilities_are_tempered_in_one_place_and_argmax_kept() -> None:
    plain = pixel_predictor("reflect")
    x = torch.randn(6, 2, 64, 64) * 4 - 12
    with torch.no_grad():
        logits = plain.branch(channels_last(plain.normalize(x)))
        # No temperature: the plain softmax, bitwise (files written before calibration).
        assert plain.info.temperature is None
        assert torch.equal(plain(x), torch.softmax(logits, dim=1))
        assert torch.equal(plain(x), calibrated(plain, 1.0)(x))
        sharp = calibrated(plain, 0.25)
        torch.testing.assert_close(sharp(x), torch.softmax(logits / 0.25, dim=1))
        assert torch.equal(sharp(x).argmax(1), plain(x).argmax(1))
        assert not torch.allclose(sharp(x), plain(x))


def read_band_stack(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def maps_at_temperatures(tmp_path: Path, temperatures: dict[str, float | None],
                         **settings: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The pixel-mode test scene mapped by one branch at each temperature (``None``: the
    plain branch), with ``settings``: each name's map and probability band stacks."""
    scene = write_pixel_scene(tmp_path / "sar.tif")
    plain = pixel_predictor("reflect")
    outputs = {}
    for name, temperature in temperatures.items():
        predictor = plain if temperature is None else calibrated(plain, temperature)
        out, probs = tmp_path / f"{name}.tif", tmp_path / f"{name}.p.tif"
        predict_to_file(predictor, scene, out, MapSettings.of(**settings, probabilities=probs))
        outputs[name] = read_band_stack(out), read_band_stack(probs)
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["windows", "dense", "pixel"])
def test_temperature_changes_no_class_of_a_map(mode: str, tmp_path: Path) -> None:
    """One window per cell (coarse): the same classes, other probabilities; without a
    temperature, the map of T = 1. Mode pixel: the decoder's probabilities, untempered."""
    outputs = maps_at_temperatures(tmp_path, {"plain": None, "one": 1.0, "hot": 2.0},
                                   mode=mode, stride=8, coarse=mode != "pixel", smoothing=0)
    for name in ("one", "hot"):
        np.testing.assert_array_equal(outputs[name][0], outputs["plain"][0])
    np.testing.assert_array_equal(outputs["one"][1], outputs["plain"][1])
    if mode == "pixel":
        np.testing.assert_array_equal(outputs["hot"][1], outputs["plain"][1])
    else:  # warmer: lower top probabilities
        top = [np.nanmax(outputs[name][1], axis=0) for name in ("plain", "hot")]
        assert np.nanmean(top[1]) < np.nanmean(top[0]) - 0.02


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["windows", "dense"])
def test_temperature_changes_no_class_where_windows_overlap(mode: str, tmp_path: Path) -> None:
    """Overlapping windows (stride 8, a quarter of the patch): a pixel's probabilities are
    the mean of its windows' untempered probabilities, tempered once averaged, so a
    temperature changes no class (the mean of the tempered probabilities did: sharper
    windows count more like votes). Only near-ties may round either way."""
    maps = maps_at_temperatures(tmp_path, {"plain": None, "sharp": 0.2, "hot": 3.0},
                                mode=mode, stride=8)
    codes, probs = maps["plain"]
    codes = codes[0]
    top2 = np.sort(np.nan_to_num(probs), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    assert clear.mean() > 0.95
    for name in ("sharp", "hot"):
        assert (maps[name][0][0][clear] == codes[clear]).all(), name
    top = {name: np.nanmean(np.nanmax(p, axis=0)) for name, (_, p) in maps.items()}
    assert top["sharp"] > top["plain"] + 0.02 and top["hot"] < top["plain"] - 0.02


def test_temperature_survives_the_predictor_file(tmp_path: Path) -> None:
    branch = calibrated(pixel_predictor("reflect"), 0.3)
    branch.save(tmp_path / "sar.pt")
    loaded = load_predictor(tmp_path / "sar.pt")
    assert loaded.info.temperature == 0.3
    x = torch.randn(3, 2, 64, 64) * 4 - 12
    with torch.no_grad():
        assert torch.equal(loaded(x), branch(x))
    # A file from before calibration (no temperature in its info) loads uncalibrated.
    payload = torch.load(tmp_path / "sar.pt", weights_only=True)
    del payload["info"]["temperature"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_predictor(tmp_path / "old.pt").info.temperature is None


def test_temperature_survives_onnx_export(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="not run: onnxruntime not installed")
    onnx = pytest.importorskip("onnx", reason="not run: onnx not installed")
    from discomkd_geo.models.onnx_export import export_onnx

    branch = calibrated(pixel_predictor("reflect"), 0.3)
    export_onnx(branch, tmp_path / "sar.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "sar.onnx")).metadata_props}
    assert json.loads(meta["discomkd_geo"])["info"]["temperature"] == 0.3
    exported = load_predictor(tmp_path / "sar.onnx")
    assert exported.info.temperature == 0.3
    rng = np.random.default_rng(0)
    patch = branch.info.patch_size
    batch = rng.normal(-12, 4, (5, 2, patch, patch)).astype(np.float32)
    expected = branch.predict_batch(batch, "cpu")
    np.testing.assert_allclose(exported.predict_batch(batch, "cpu"), expected, atol=1e-4)
    block = rng.normal(-12, 4, (2, 96 + 2 * branch.pixel_halo(), 96 + 2 * branch.pixel_halo()))
    block = block.astype(np.float32)
    halo = branch.pixel_halo()
    np.testing.assert_allclose(exported.predict_pixels(block, halo, "cpu"),
                               branch.predict_pixels(block, halo, "cpu"), atol=1e-4)


def strip_temperatures(run: Path) -> None:
    """Make ``run`` a run from before calibration: no temperature in its files."""
    for m in ("ms", "sar"):
        for path in run_files(run, m):
            payload = torch.load(path, weights_only=True)
            payload["discomkd_geo"]["predictors"][m]["info"].pop("temperature")
            torch.save(payload, path)


@pytest.mark.slow
def test_train_calibrates_and_fit_calibration_refits(ms4_run: Path, tmp_path: Path) -> None:
    recorded = json.loads((ms4_run / "metrics.json").read_text())["calibration"]
    assert set(recorded) == {"ms", "sar"}
    for m, entry in recorded.items():
        assert file_temperature(run_files(ms4_run, m)[0], m) == entry["temperature"] > 0
        assert entry["method"] in FIT_METHODS
        assert entry["ece_after"] <= entry["ece_before"] + 1e-9
        assert (ms4_run / "plots" / f"reliability_{m}_val.png").stat().st_size > 1000
    run = tmp_path / "run"
    shutil.copytree(ms4_run, run)
    again = CliRunner().invoke(main, ["fit-calibration", str(run)])
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [
        f"Error: {run}: the ms branch is calibrated already (temperature "
        f"{recorded['ms']['temperature']:.4g}); pass --overwrite to fit it again"]
    # A run from before calibration: fitted as train fits it.
    strip_temperatures(run)
    assert load_predictor(run, "sar").info.temperature is None
    result = CliRunner().invoke(main, ["fit-calibration", str(run), "--json"])
    assert result.exit_code == 0, result.output
    fitted = json.loads(result.output)
    assert fitted == recorded
    assert load_predictor(run, "sar").info.temperature == recorded["sar"]["temperature"]
    assert json.loads((run / "metrics.json").read_text())["calibration"] == recorded
    result = CliRunner().invoke(main, ["fit-calibration", str(run), "--modality", "sar",
                                       "--overwrite"])
    assert result.exit_code == 0, result.output
    how = " (rule of succession)" if recorded["sar"]["method"] == "succession" else ""
    assert result.output.startswith(f"sar: temperature {recorded['sar']['temperature']:.4g}"
                                    f"{how}, validation ECE")


@pytest.mark.slow
def test_evaluate_reports_ece_before_and_after(ms4_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(ms4_run, run)
    args = ["evaluate", "--checkpoint", str(run), "--modality", "sar", "--split", "val"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    recorded = json.loads((run / "metrics.json").read_text())["calibration"]["sar"]
    for key in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after"):
        assert scored[key] == pytest.approx(recorded[key], abs=1e-6)
    assert (run / "plots" / "reliability_sar_val.png").stat().st_size > 1000
    plot = tmp_path / "reliability.png"
    result = CliRunner().invoke(main, [*args, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert f"ECE {recorded['ece_before']:.4f} before, {recorded['ece_after']:.4f} after" \
        in result.output
    assert plot.stat().st_size > 1000
    refused = CliRunner().invoke(main, [*args, "--plot", str(plot)])
    assert refused.exit_code == 1 and "already exists" in refused.output


def test_how_each_temperature_was_fitted_is_reported(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training's log and fit-calibration's lines say how each T was fitted: a branch
    without validation error gets its T from the rule of succession (it was once left
    uncalibrated, and its None temperature broke the log's formatting)."""
    import logging

    from discomkd_geo.config import load_config
    from discomkd_geo.training import temperature_fit, train

    results = {"ms": BranchCalibration("ms", 0.42, 10, 0.1, 0.01, 0.3, 0.05, False,
                                       "succession"),
               "sar": BranchCalibration("sar", 0.5, 10, 0.2, 0.05, 0.9, 0.6, False, "nll")}
    monkeypatch.setattr(train, "calibrate_run", lambda *args, **kwargs: results)
    monkeypatch.setattr(temperature_fit, "calibrate_run", lambda *args, **kwargs: results)
    with caplog.at_level(logging.INFO, logger="discomkd_geo"):
        assert train._calibrate(load_config(None), tmp_path, ["ms", "sar"]) == results
    messages = [record.getMessage() for record in caplog.records]  # raises on a bad format
    assert messages == [
        "ms calibration: temperature 0.42 (succession), validation ECE 0.1000 -> 0.0100 "
        "(10 images)",
        "sar calibration: temperature 0.5 (nll), validation ECE 0.2000 -> 0.0500 (10 images)"]
    out = CliRunner().invoke(main, ["fit-calibration", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == [
        "ms: temperature 0.42 (rule of succession), validation ECE 0.1000 -> 0.0100 "
        "(10 images)",
        "sar: temperature 0.5, validation ECE 0.2000 -> 0.0500 (10 images)"]

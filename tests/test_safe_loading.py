"""Model files must not run code: every checkpoint, run directory and export loads weights-only.

A malicious pickle (its ``__reduce__`` runs a shell command that creates a marker file)
is saved as a ``.pt``, a ``.ckpt`` and inside a run directory; loading it must refuse
with one line naming the file and never create the marker. The package's own files
load without any trust option, and ``trusted=True`` / ``--trust-checkpoint`` reads a
file that needs more (with a harmless extra object).
"""

import fractions
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from warm_python import WarmPython

from discomkd_geo import load_predictor
from discomkd_geo.cli import main
from discomkd_geo.constants import SAR
from discomkd_geo.data.sensors import SENSORS
from discomkd_geo.errors import UntrustedFileError
from discomkd_geo.models.info import PredictorInfo
from discomkd_geo.training.baselines import load_teacher
from discomkd_geo.training.evaluate import evaluate, training_config
from discomkd_geo.training.train import epochs_done

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[1]),
                                                   os.environ.get("PYTHONPATH"))))}


class Exploit:
    """Unpickling it runs ``touch MARKER`` (what an attacker's ``os.system`` call would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _evil(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "payload": Exploit(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def evil_run(ms4_run: Path, tmp_path: Path, marker: Path) -> Path:
    """A copy of a real run directory whose best-sar and last checkpoints are malicious."""
    run = tmp_path / "run"
    shutil.copytree(ms4_run, run)
    for name in ("best-sar.ckpt", "last.ckpt"):
        _evil(run / "checkpoints" / name, marker)
    return run


@pytest.mark.parametrize("name", ["model.pt", "model.ckpt"])
def test_malicious_file_runs_nothing_in_python(tmp_path: Path, marker: Path, name: str) -> None:
    path = _evil(tmp_path / name, marker)
    with pytest.raises(UntrustedFileError, match="refused") as info:
        load_predictor(path, "sar")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "system" in message  # names what it would have called
    with pytest.raises(UntrustedFileError):
        training_config(path)
    with pytest.raises(UntrustedFileError):
        load_teacher(path, {}, [])
    assert not marker.exists()


@pytest.mark.slow
def test_malicious_run_directory_runs_nothing(evil_run: Path, marker: Path) -> None:
    with pytest.raises(UntrustedFileError, match="best-sar.ckpt: refused"):
        load_predictor(evil_run, "sar")
    with pytest.raises(UntrustedFileError, match="best-sar.ckpt: refused"):
        evaluate(evil_run, "sar")
    with pytest.raises(UntrustedFileError, match="last.ckpt: refused"):
        epochs_done(evil_run)  # train --resume reads it before Lightning does
    assert load_predictor(evil_run, "ms").info.modality == "ms"  # the intact branch
    assert not marker.exists()


@pytest.fixture(scope="module")
def python() -> Iterator[WarmPython]:
    """``python -m discomkd_geo ...`` runs, each a process of its own, forked from one
    interpreter that imported torch, Lightning, rasterio, ... once (tests/warm_python.py)."""
    warm = WarmPython(ENV)
    yield warm
    warm.close()


def _cli(python: WarmPython, *args: object) -> subprocess.CompletedProcess[str]:
    return python.run(["-m", "discomkd_geo", *args], cwd=Path.cwd(), timeout=300)


@pytest.mark.slow
def test_malicious_files_refused_by_every_command(python: WarmPython, evil_run: Path,
                                                  scene_dir: Path, tmp_path: Path,
                                                  marker: Path) -> None:
    pt = _evil(tmp_path / "model.pt", marker)
    ckpt = _evil(tmp_path / "model.ckpt", marker)
    out = tmp_path / "out"
    cases = [
        (pt, ["inspect", scene_dir / "sar.tif", "--checkpoint", pt]),
        (ckpt, ["predict", "--checkpoint", ckpt, "--sar", scene_dir / "sar.tif",
                "-o", out / "map.tif"]),
        (evil_run / "checkpoints" / "best-sar.ckpt",
         ["export", "--checkpoint", evil_run, "--modality", "sar", "-o", out / "sar.pt"]),
        (evil_run / "checkpoints" / "best-sar.ckpt",
         ["evaluate", "--checkpoint", evil_run, "--modality", "sar"]),
        (evil_run / "checkpoints" / "last.ckpt",
         ["train", "--config", evil_run / "config.yaml", "--out", evil_run, "--resume"]),
    ]
    out.mkdir()
    for path, args in cases:
        result = _cli(python, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, args
        assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: refused"), result.stderr
        assert "--trust-checkpoint" in lines[0]
    assert not marker.exists()
    assert not any(out.iterdir())


def test_files_from_before_sensor_profiles_load_with_their_units(tmp_path: Path) -> None:
    """``tests/data/main_predictor.pt`` (written on ``main``) stores units ``dB``: it loads,
    answers with the Sentinel-1 profile and saves the same string again."""
    old = load_predictor(Path(__file__).parent / "data" / "main_predictor.pt")
    assert old.info.units == "dB" and old.info.sensor is SENSORS[SAR]
    old.save(tmp_path / "again.pt")
    assert torch.load(tmp_path / "again.pt", weights_only=True)["info"]["units"] == "dB"
    assert PredictorInfo("sar", ["VV", "VH"], ["a"], [(0, 0, 0)], 64).units == "dB"


@pytest.mark.slow
def test_own_files_load_weights_only(ms4_run: Path, tmp_path: Path) -> None:
    """Checkpoints, run directories and exports of this package need no trust."""
    for ckpt in sorted((ms4_run / "checkpoints").glob("*.ckpt")):
        payload = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert "state_dict" in payload
    assert epochs_done(ms4_run) == 1
    exported = tmp_path / "sar.pt"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(ms4_run), "--modality",
                                       "sar", "-o", str(exported)])
    assert result.exit_code == 0, result.output
    x = torch.rand(2, 2, 64, 64)
    direct = load_predictor(ms4_run, "sar")
    for source in (exported, ms4_run / "checkpoints" / "best-sar.ckpt"):
        torch.testing.assert_close(load_predictor(source, "sar")(x), direct(x))


@pytest.mark.slow
def test_trust_option_loads_a_file_that_needs_more(ms4_run: Path, tmp_path: Path) -> None:
    """A harmless non-tensor object (a Fraction) is refused, then loaded when trusted."""
    payload = torch.load(ms4_run / "checkpoints" / "best-sar.ckpt", weights_only=True)
    payload["note"] = fractions.Fraction(1, 3)
    path = tmp_path / "custom.ckpt"
    torch.save(payload, path)
    with pytest.raises(UntrustedFileError, match="Fraction"):
        load_predictor(path, "sar")
    x = torch.rand(2, 2, 64, 64)
    trusted = load_predictor(path, "sar", trusted=True)
    torch.testing.assert_close(trusted(x), load_predictor(ms4_run, "sar")(x))
    assert training_config(path, trusted=True) is not None

    refused = CliRunner().invoke(main, ["export", "--checkpoint", str(path), "--modality",
                                        "sar", "-o", str(tmp_path / "a.pt")])
    assert refused.exit_code != 0 and "refused" in refused.output
    exported = tmp_path / "b.pt"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(path), "--modality",
                                       "sar", "-o", str(exported), "--trust-checkpoint"])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(load_predictor(exported)(x), trusted(x))

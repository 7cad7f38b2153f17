"""The wheel carries the demo: installed away from any checkout, `demo --quick` runs."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_demo_outside_a_checkout(tmp_path: Path) -> None:
    # Build from a copy holding only what the wheel needs (no build/ litter in the repo).
    src = tmp_path / "src"
    shutil.copytree(REPO / "discomkd_geo", src / "discomkd_geo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tiles" / "demo", src / "tiles" / "demo")
    (src / "configs").mkdir()
    shutil.copy(REPO / "configs" / "demo.yaml", src / "configs")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp_path / "dist", src])
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"discomkd_geo/demo_data/demo.yaml", "discomkd_geo/demo_data/tiles/sar.tif",
            "discomkd_geo/demo_data/tiles/truth.tif"} <= set(names)
    assert not any(n.startswith(("configs/", "tiles/")) for n in names)
    # `discomkd-geo qgis install` copies the plugin out of the installed package.
    assert "discomkd_geo/qgis_plugin/metadata.txt" in names

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "DISCOMKD_GEO_CACHE": str(tmp_path / "cache")}
    where = _run([sys.executable, "-c", "import discomkd_geo; print(discomkd_geo.__file__)"],
                 cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(site)

    result = _run([site / "bin" / "discomkd-geo", "demo", "--quick", "--out", "demo"],
                  cwd=elsewhere, env=env)
    log = result.stdout + result.stderr
    assert f"{site / 'discomkd_geo' / 'demo_data' / 'tiles' / 'sar.tif'}" in log
    # A log file gets only meaningful lines: no Lightning chatter, bars or warnings.
    prefixes = ("[1/4] ", "[2/4] ", "epoch 1/1: loss ", "sar decoder epoch 1/1: pixel loss ",
                "sar decoder: 1 epoch in ", "      ms patch test", "      sar patch test",
                "[3/4] ", "[4/4] map vs truth (pixel mode)", "done in ")
    # Each branch's calibration, and a warning where the 1-epoch model's fit hits a bound.
    calibration = ("ms calibration: ", "sar calibration: ", "warning: ms calibration: ",
                   "warning: sar calibration: ")
    lines = log.splitlines()
    assert all(line.startswith(prefixes + calibration) for line in lines), log
    assert sum(line.startswith(prefixes) for line in lines) == 10, log
    assert sum(line.startswith(calibration[:2]) for line in lines) == 2, log
    assert "\r" not in log
    summary = json.loads((elsewhere / "demo" / "summary.json").read_text())
    assert summary["map_accuracy"]["pixels"] > 0
    assert (elsewhere / "demo" / "landcover_sar.stac.json").is_file()

"""The QGIS plugin: install/package, the subprocess runner (progress, cancel), and the
Processing provider under a real headless QGIS (``qgis_process``) where one is installed."""

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from discomkd_geo.cli import main
from discomkd_geo.demo import DEMO_TILES
from discomkd_geo.qgis import PLUGIN_FILES, PLUGIN_NAME, enable_plugin
from discomkd_geo.qgis_plugin.runner import Cancelled, CliError, run_cli

#: Subprocesses and qgis_process runs: the whole module is in the slow tier.
pytestmark = pytest.mark.slow

EXECUTABLE = str(Path(sys.executable).with_name("discomkd-geo"))
# Debian's qgis_process wrapper passes /etc/default/qgis's QGIS_OPTS (--noversioncheck),
# which qgis_process itself refuses: run the binary where there is one.
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
needs_qgis = pytest.mark.skipif(QGIS_PROCESS is None, reason="not run: QGIS not installed "
                                "(qgis_process missing; `make qgis-deps` installs it as root)")
PLUGIN_ALGORITHMS = Path(__file__).parents[1] / "discomkd_geo" / "qgis_plugin" / "algorithms.py"


def plugin_list(name: str) -> list[str]:
    """A choice list of the QGIS plugin, read from its source (it imports QGIS)."""
    for node in ast.parse(PLUGIN_ALGORITHMS.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"the plugin defines no {name}")


def test_the_plugins_choice_lists_are_the_librarys() -> None:
    """The plugin imports only QGIS and the standard library, so it copies the library's
    choice lists: each must equal the CLI's, default first."""
    from discomkd_geo.assessment.estimators import INTERVALS
    from discomkd_geo.assessment.sampling import ALLOCATIONS

    def choices(command: str, name: str) -> tuple[list[str], object]:
        [option] = [p for p in main.commands[command].params if p.name == name]
        return list(option.type.choices), option.default

    for plugin, library, (cli, default) in [
            ("INTERVALS", INTERVALS, choices("assess", "interval")),
            ("ALLOCATIONS", ALLOCATIONS, choices("sample", "allocation"))]:
        assert sorted(plugin_list(plugin)) == sorted(library) == sorted(cli), plugin
        assert plugin_list(plugin)[0] == default, plugin


def test_install_writes_an_enabled_plugin_and_package_zips_it(tmp_path: Path) -> None:
    profile = tmp_path / "profiles" / "default"
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text("[General]\nfoo=1\n\n[PythonPlugins]\n"
                                                "other=true\n")
    args = ["qgis", "install", "--profile-dir", str(profile)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    plugin = profile / "python" / "plugins" / PLUGIN_NAME
    assert sorted(p.name for p in plugin.iterdir()) == sorted([*PLUGIN_FILES, "install.json"])
    assert json.loads((plugin / "install.json").read_text()) == {"executable": EXECUTABLE}
    ini = (profile / "QGIS" / "QGIS3.ini").read_text()
    assert ini == ("[General]\nfoo=1\n\n[PythonPlugins]\ndiscomkd_geo_qgis=true\n"
                   "other=true\n")
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and again.output.strip().endswith("pass --overwrite to "
                                                                  "replace it")
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert enable_plugin(profile).read_text() == ini  # idempotent
    zipped = tmp_path / "plugin.zip"
    result = CliRunner().invoke(main, ["qgis", "package", "-o", str(zipped)])
    assert result.exit_code == 0, result.output
    names = zipfile.ZipFile(zipped).namelist()
    assert sorted(names) == sorted(f"{PLUGIN_NAME}/{n}" for n in PLUGIN_FILES)


def test_install_refuses_a_missing_executable_and_a_file_for_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each in one line, nothing installed; a name on the PATH is recorded absolute."""
    profile = tmp_path / "profile"
    (tmp_path / "afile").write_text("")
    cases = {
        ("--executable", "/nonexistent"): "Error: /nonexistent: not found; pass --executable",
        ("--executable", str(tmp_path / "afile")): f"Error: {tmp_path / 'afile'}: is not "
                                                   "executable; pass --executable",
        ("--profile-dir", str(tmp_path / "afile")): f"Error: {tmp_path / 'afile'}: is a "
                                                    "file, not a QGIS profile directory; "
                                                    "pass --profile-dir",
    }
    for args, message in cases.items():
        result = CliRunner().invoke(main, ["qgis", "install", "--profile-dir", str(profile),
                                           *args])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(message), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    monkeypatch.setenv("PATH", f"{Path(EXECUTABLE).parent}{os.pathsep}{os.environ['PATH']}")
    result = CliRunner().invoke(main, ["qgis", "install", "--profile-dir", str(profile),
                                       "--executable", Path(EXECUTABLE).name])
    assert result.exit_code == 0, result.output
    recorded = profile / "python" / "plugins" / PLUGIN_NAME / "install.json"
    assert json.loads(recorded.read_text()) == {"executable": EXECUTABLE}


def test_default_profile_per_system(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from discomkd_geo.qgis import default_profile_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    tail = Path("QGIS", "QGIS3", "profiles", "default")
    assert default_profile_dir("linux") == tmp_path / ".local" / "share" / tail
    assert default_profile_dir("darwin") == tmp_path / "Library" / "Application Support" / tail
    assert default_profile_dir("win32") == tmp_path / "Roaming" / tail


def test_plugin_imports_neither_torch_nor_the_package() -> None:
    """QGIS's Python has neither: the plugin may import the standard library and QGIS."""
    source = Path(__file__).parents[1] / "discomkd_geo" / "qgis_plugin"
    allowed = {"qgis", "processing", *sys.stdlib_module_names}
    for name in PLUGIN_FILES:
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((source / name).read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{name} imports {roots}"


@pytest.fixture(scope="module")
def sar_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small-CNN SAR predictor file (as in test_inference)."""
    from tests.test_inference import saved_sar_model

    return saved_sar_model(tmp_path_factory.mktemp("model") / "sar.pt")


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 px SAR scene: mapping it at stride 4 takes long enough to cancel."""
    from tests.test_inference import texture, write_scene

    return write_scene(tmp_path_factory.mktemp("big") / "sar.tif", texture(2, 1024, seed=3),
                       ["VV", "VH"])


def test_runner_reports_progress_and_errors(sar_model: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_inference import texture, write_scene

    # A frame per chunk: tqdm draws at most every 0.1 s, and on a fast machine the whole
    # map takes less (the run then gave only 0 and 100).
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    scene = write_scene(tmp_path / "sar.tif", texture(2, 256, seed=2), ["VV", "VH"])
    seen, lines = [], []
    run_cli(["predict", "--checkpoint", sar_model, "--sar", scene, "-o", tmp_path / "m.tif",
             "--chunk-size", "64", "--stride", "8"], EXECUTABLE, progress=seen.append,
            log=lines.append)
    assert seen and seen == sorted(seen) and seen[-1] == 100 and len(set(seen)) > 2
    assert (tmp_path / "m.tif").exists()
    with pytest.raises(CliError, match=r"^Error: .*m.tif: already exists; pass --overwrite"):
        run_cli(["predict", "--checkpoint", sar_model, "--sar", scene, "-o",
                 tmp_path / "m.tif"], EXECUTABLE)


def test_cancel_stops_the_run_and_leaves_no_output(sar_model: Path, big_scene: Path,
                                                   tmp_path: Path) -> None:
    seen: list[int] = []
    out = tmp_path / "map.tif"
    with pytest.raises(Cancelled):
        run_cli(["predict", "--checkpoint", sar_model, "--sar", big_scene, "-o", out,
                 "--stride", "4", "--chunk-size", "128", "--probabilities",
                 tmp_path / "p.tif"], EXECUTABLE, progress=seen.append,
                canceled=lambda: bool(seen), outputs=[out, tmp_path / "p.tif"])
    assert seen and seen[-1] < 100  # stopped mid-run
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporaries


@pytest.mark.skipif(sys.platform == "win32", reason="the runner interrupts with SIGINT on POSIX")
def test_an_interrupt_stops_a_run_started_with_sigint_ignored(sar_model: Path, big_scene: Path,
                                                              tmp_path: Path) -> None:
    """A script's background jobs inherit SIGINT ignored: Cancel's interrupt still stops the
    run, and nothing is written (without that, the run finished and wrote its outputs)."""
    out = tmp_path / "map.tif"
    proc = subprocess.Popen(
        [EXECUTABLE, "predict", "--checkpoint", str(sar_model), "--sar", str(big_scene), "-o",
         str(out), "--stride", "4", "--chunk-size", "128"], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=dict(os.environ, DISCOMKD_GEO_PROGRESS="always"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    with proc:
        seen = b""
        while b"%" not in seen and proc.poll() is None:  # mapping has started
            seen += proc.stderr.read(1)
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        assert proc.wait(timeout=120) != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------- under QGIS itself
def qgis_process(profile_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile_root), QT_QPA_PLATFORM="offscreen",
               XDG_RUNTIME_DIR=str(profile_root))
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def qgis_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh QGIS settings root with the plugin installed and enabled."""
    root = tmp_path_factory.mktemp("qgis")
    result = CliRunner().invoke(main, ["qgis", "install", "--profile-dir",
                                       str(root / "profiles" / "default")])
    assert result.exit_code == 0, result.output
    return root


@needs_qgis
def test_qgis_process_lists_the_algorithms(qgis_profile: Path) -> None:
    done = qgis_process(qgis_profile, "list")
    assert done.returncode == 0, done.stderr
    for name in ("map", "inspect", "vectorize", "zonal", "sample", "assess"):
        assert f"discomkd_geo:{name}" in done.stdout, done.stdout[-2000:]


@needs_qgis
def test_qgis_assessment_chain_equals_the_cli(qgis_profile: Path, tmp_path: Path) -> None:
    """Sample the demo map (labels from the truth through the CLI), assess it in QGIS."""
    demo_map = Path(__file__).parent / "data" / "demo_sar_map.tif"
    gui_points = tmp_path / "gui_points.gpkg"
    done = qgis_process(qgis_profile, "run", "discomkd_geo:sample", "--", f"INPUT={demo_map}",
                        "SIZE=300", "MIN_PER_CLASS=25", "SEED=4", f"OUTPUT={gui_points}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cli_points = tmp_path / "cli_points.gpkg"
    result = CliRunner().invoke(main, ["sample", str(demo_map), "-n", "300", "--min-per-class",
                                       "25", "--seed", "4", "--truth",
                                       str(DEMO_TILES / "truth.tif"), "-o", str(cli_points)])
    assert result.exit_code == 0, result.output
    import geopandas as gpd

    assert gpd.read_file(gui_points).geometry.equals(gpd.read_file(cli_points).geometry)
    result = CliRunner().invoke(main, ["assess", str(demo_map), str(cli_points), "-o",
                                       str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    done = qgis_process(qgis_profile, "run", "discomkd_geo:assess", "--", f"INPUT={demo_map}",
                        f"REFERENCE={cli_points}", "LABEL_COLUMN=reference",
                        f"OUTPUT={tmp_path / 'gui'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert ((tmp_path / "gui" / "assessment.csv").read_text()
            == (tmp_path / "cli" / "assessment.csv").read_text())


@needs_qgis
def test_qgis_map_algorithm_equals_the_cli(qgis_profile: Path, demo_sar_model: Path,
                                           tmp_path: Path) -> None:
    model = demo_sar_model
    scene = DEMO_TILES / "sar.tif"
    cli_map = tmp_path / "cli.tif"
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(model), "--sar",
                                       str(scene), "-o", str(cli_map), "--no-progress"])
    assert result.exit_code == 0, result.output
    qgis_map = tmp_path / "qgis.tif"
    done = qgis_process(qgis_profile, "run", "discomkd_geo:map", "--",
                        f"SAR={scene}", f"CHECKPOINT={model}", "MODE=0",
                        # passed on as --smoothing (no effect in windows mode)
                        "SMOOTHING=0", f"OUTPUT={qgis_map}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with rasterio.open(cli_map) as a, rasterio.open(qgis_map) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.crs == b.crs and a.transform == b.transform
    assert qgis_map.with_suffix(".qml").exists()
    # The same through an ONNX export (onnxruntime in the executable's environment).
    onnx_model = tmp_path / "sar.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(model), "--modality",
                                       "sar", "-o", str(onnx_model)])
    assert result.exit_code == 0, result.output
    done = qgis_process(qgis_profile, "run", "discomkd_geo:map", "--", f"SAR={scene}",
                        f"CHECKPOINT={onnx_model}", f"OUTPUT={tmp_path / 'onnx.tif'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with rasterio.open(cli_map) as a, rasterio.open(tmp_path / "onnx.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # inspect through QGIS: the report says predict would map it
    done = qgis_process(qgis_profile, "run", "discomkd_geo:inspect", "--", f"SCENE={scene}",
                        f"CHECKPOINT={model}", "MODALITY=0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "predict maps this scene" in done.stdout


@needs_qgis
def test_qgis_gis_chain_equals_the_cli(qgis_profile: Path, demo_sar_model: Path,
                                       tmp_path: Path) -> None:
    """AOI -> map (+ polygons) -> vectorize -> zonal areas, through QGIS and the CLI."""
    import geopandas as gpd

    scene, vectors = DEMO_TILES / "sar.tif", DEMO_TILES / "districts.gpkg"
    cli, gui = tmp_path / "cli", tmp_path / "qgis"
    cli.mkdir()
    gui.mkdir()
    result = CliRunner().invoke(main, [
        "predict", "--checkpoint", str(demo_sar_model), "--sar", str(scene),
        "-o", str(cli / "map.tif"), "--aoi", f"{vectors}:study_area",
        "--vector", str(cli / "polygons.gpkg"), "--no-progress"])
    assert result.exit_code == 0, result.output
    done = qgis_process(qgis_profile, "run", "discomkd_geo:map", "--", f"SAR={scene}",
                        f"CHECKPOINT={demo_sar_model}", f"AOI={vectors}|layername=study_area",
                        f"OUTPUT={gui / 'map.tif'}", f"VECTOR={gui / 'polygons.gpkg'}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    codes = [read(d / "map.tif") for d in (cli, gui)]
    np.testing.assert_array_equal(*codes)
    assert (codes[0] == 255).mean() > 0.2  # the AOI left part of the scene unmapped
    assert (gui / "polygons.gpkg").is_file() and (gui / "map.qml").is_file()
    for args in (["vectorize", "--mmu", "0.5ha"], ["zonal"]):
        name = args[0]
        out = f"{name}.{'gpkg' if name == 'vectorize' else 'csv'}"
        cli_args = [name, str(cli / "map.tif")]
        if name == "zonal":
            cli_args.append(f"{vectors}:districts")
        result = CliRunner().invoke(main, [*cli_args, *args[1:], "-o", str(cli / out)])
        assert result.exit_code == 0, result.output
        params = [f"INPUT={gui / 'map.tif'}", f"OUTPUT={gui / out}"]
        params += ["MMU=0.5ha"] if name == "vectorize" else [
            f"ZONES={vectors}|layername=districts"]
        done = qgis_process(qgis_profile, "run", f"discomkd_geo:{name}", "--", *params)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (gui / "zonal.csv").read_text() == (cli / "zonal.csv").read_text()
    polygons = [gpd.read_file(d / "vectorize.gpkg", layer="vectorize") for d in (cli, gui)]
    assert len(polygons[0]) == len(polygons[1]) > 1
    assert polygons[0].drop(columns="geometry").equals(polygons[1].drop(columns="geometry"))


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()

"""Faults: kill -9 during train and predict (real processes), and bad inputs.

Every case checks what a user sees (one line on stderr naming the file, the exit code)
and what is left on disk (nothing half-written at the target, no stale temporary).
"""

import csv
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rasterio
import rasterio.shutil
import torch
from click.testing import CliRunner

from discomkd_geo.cli import main
from discomkd_geo.config import load_config
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.synthetic import make_eurosat
from discomkd_geo.files import atomic_path
from discomkd_geo.training.checkpoint_io import BackgroundCheckpointIO
from discomkd_geo.training.module import VAL_BEST_KEY
from discomkd_geo.training.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: The demo config scaled down to about a second per epoch on one CPU thread.
TINY = ("model.width=4", "data.batch_size=16", "trainer.max_epochs=3",
        "trainer.accelerator=cpu", "trainer.log_every_n_steps=1")
#: Child processes import this checkout and use one torch thread, as the reference run.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[1]),
                                                   os.environ.get("PYTHONPATH"))))}


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "discomkd_geo", *map(str, args)]


def train_args(data: Path, out: Path) -> list[object]:
    return ["train", "--config", CONFIGS / "demo.yaml", "--data-root", data, "--out", out,
            "--no-progress", *[a for s in TINY for a in ("--set", s)]]


def saved_epoch(path: Path) -> int:
    """The epoch index a checkpoint holds, or -1 while there is none."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def kill_when(proc: subprocess.Popen[bytes], ready: "callable[[], bool]", log: Path) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it ends before."""
    while not ready():
        assert proc.poll() is None, log.read_text()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def invoke(*args: object) -> tuple[int, str, str]:
    """Run the CLI in this process: exit code, stdout, stderr."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 images per class: the 70/10/20 split gives 4/1/1, every class in every split."""
    root = tmp_path_factory.mktemp("faults") / "eurosat"
    make_eurosat(root, per_class=6, seed=0, layout="eurosat")
    return root


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory,
                  one_thread: None) -> Path:
    """The reference run, in this process (same code, config and thread count)."""
    config = load_config(CONFIGS / "demo.yaml", (*TINY, f"data.root={data}"))
    out = tmp_path_factory.mktemp("whole") / "run"
    train(config, out, progress=False)
    return out


# --------------------------------------------------------------------------- train
@pytest.mark.slow
def test_killed_train_resumes_to_the_same_weights(data: Path, uninterrupted: Path,
                                                  tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "log.txt"
    last = out / "checkpoints" / "last.ckpt"
    with log.open("w") as f:
        proc = subprocess.Popen(cli(*train_args(data, out)), stdout=f, stderr=f, env=ENV)
        kill_when(proc, lambda: saved_epoch(last) >= 1, log)  # the second epoch's checkpoint
    done = saved_epoch(last) + 1
    assert done < 3 and not (out / "metrics.json").exists()

    result = subprocess.run(cli(*train_args(data, out), "--resume"), capture_output=True,
                            text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming from epoch {done} ({done} of 3 epochs done)" in result.stdout
    # No epoch trained twice: the continued log holds each epoch's validation once.
    with (out / "logs" / "metrics.csv").open() as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/ms/f1_weighted")]
    assert epochs == [0, 1, 2]
    # CPU training with one thread is deterministic, and the checkpoint carries the
    # random states and sampler generators: bitwise the same weights as the reference.
    for name in ("last.ckpt", "best-ms.ckpt", "best-sar.ckpt"):
        a = torch.load(uninterrupted / "checkpoints" / name, weights_only=True)
        b = torch.load(out / "checkpoints" / name, weights_only=True)
        assert a["epoch"] == b["epoch"], name
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), (name, key)
        # Each head's best score so far, which early stopping watches, resumed too.
        assert a[VAL_BEST_KEY] == b[VAL_BEST_KEY], name
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test == json.loads((uninterrupted / "metrics.json").read_text())["test"]
    assert not list(out.rglob(".*partial*"))


@pytest.mark.slow
def test_resume_a_finished_run_says_so(data: Path, uninterrupted: Path) -> None:
    before = (uninterrupted / "metrics.json").read_text()
    code, out, _ = invoke(*train_args(data, uninterrupted), "--resume")
    assert code == 0 and f"{uninterrupted}: finished (3 epochs) before; nothing to resume" in out
    assert (uninterrupted / "metrics.json").read_text() == before


def test_resume_with_nothing_to_resume_is_an_error(data: Path, tmp_path: Path) -> None:
    code, _, err = invoke(*train_args(data, tmp_path / "never"), "--resume")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"Error: {tmp_path / 'never'}: nothing to resume")
    assert not (tmp_path / "never").exists()


def test_a_kill_while_a_checkpoint_is_written_keeps_the_previous(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"previous epoch")

    def save(checkpoint: dict, path: Path) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt  # what a kill in the middle of the write amounts to here

    monkeypatch.setattr(torch, "save", save)
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"weights": torch.ones(3)}, last)
    with pytest.raises(KeyboardInterrupt):  # the writer's error reaches the trainer
        io.teardown()
    assert last.read_bytes() == b"previous epoch" and files(tmp_path) == {"last.ckpt"}


def test_a_checkpoint_holds_the_state_of_its_save_not_of_its_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = torch.save
    trained = threading.Event()

    def slow_save(checkpoint: dict, path: Path) -> None:
        trained.wait(10)  # the write starts after the next optimiser step
        written(checkpoint, path)

    monkeypatch.setattr(torch, "save", slow_save)
    weights = torch.zeros(1000)
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"weights": weights}, tmp_path / "last.ckpt")
    weights += 1  # what Adam does in place while the file is written
    trained.set()
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["weights"], torch.zeros(1000))
    assert files(tmp_path) == {"last.ckpt"}


def test_checkpoint_storage_options_are_refused_at_the_save(tmp_path: Path) -> None:
    io = BackgroundCheckpointIO()
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"step": torch.tensor(0)}, tmp_path / "last.ckpt", {"anon": True})
    io.teardown()
    assert files(tmp_path) == set()


def test_checkpoints_are_written_in_the_order_saved(tmp_path: Path) -> None:
    io = BackgroundCheckpointIO()
    for step in range(6):  # more saves than copies held: the later ones wait
        io.save_checkpoint({"step": torch.tensor(step)}, tmp_path / "last.ckpt")
    io.teardown()
    assert int(torch.load(tmp_path / "last.ckpt", weights_only=True)["step"]) == 5
    assert files(tmp_path) == {"last.ckpt"}


def test_too_small_splits_fail_before_training(tmp_path: Path) -> None:
    root = tmp_path / "five"
    make_eurosat(root, per_class=5, seed=0, layout="eurosat")
    code, _, err = invoke(*train_args(root, tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1
    assert err == (f"Error: {root}: the val split is empty (short by 1 image); the random "
                   "70/10/20 split needs at least 6 images per class, the smallest class "
                   "has 5\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("paired", ["false", "true"])
def test_unpaired_images_are_counted_in_every_split(data: Path, tmp_path: Path,
                                                    paired: str) -> None:
    root = tmp_path / "eurosat"
    shutil.copytree(data, root)
    sar = root / "EuroSAT-SAR"
    for name in ("Forest_1.tif", "Forest_2.tif", "River_3.tif"):
        (sar / name.split("_")[0] / name).unlink()
    code, _, err = invoke(*train_args(root, tmp_path / "run"), "--set", f"data.paired={paired}")
    assert code == 1 and err.count("\n") == 1
    assert "has no sar twin; unpaired images: " in err
    counts = err.split("unpaired images: ")[1].split(";")[0]
    assert sum(int(n.split()[0]) for n in counts.split(", ")) == 3, counts
    # The library names the parameter and its config key (`--set` sets any config key).
    assert "config key data.drop_unpaired" in err and not (tmp_path / "run").exists()
    # Dropped alike in every split, each modality's training set included.
    config = load_config(CONFIGS / "demo.yaml", (*TINY, f"data.root={root}",
                                                 f"data.paired={paired}",
                                                 "data.drop_unpaired=true"))
    dm = MSSARDataModule(config.data)
    dm.setup()
    ids = [set(ds.ids) for ds in (*dm.train_datasets.values(), dm.val_dataset.dataset,
                                  dm.test_dataset.dataset)]
    assert ids[0] == ids[1] and sum(map(len, ids[1:])) == 60 - 3
    assert not {"Forest_1", "Forest_2", "River_3"} & set().union(*ids)


def test_malformed_yaml_is_one_line_with_line_and_column(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ndata:\n  root: x\n   batch_size: 3\n")
    code, _, err = invoke("train", "--config", bad, "--out", tmp_path / "run")
    assert (code, err) == (1, f"Error: {bad}: invalid YAML at line 4, column 14: mapping "
                              "values are not allowed here\n")
    assert not (tmp_path / "run").exists()
    code, _, err = invoke("train", "--set", "optim.lr=[1", "--out", tmp_path / "run")
    assert (code, err) == (1, "Error: config key 'optim.lr': value '[1' is not valid YAML "
                              "(line 1, column 3: expected ',' or ']', but got '<stream end>')\n")


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def checkpoint(uninterrupted: Path) -> Path:
    return uninterrupted / "checkpoints" / "best-sar.ckpt"


@pytest.mark.slow
def test_killed_predict_leaves_nothing_and_the_next_run_cleans_up(
        checkpoint: Path, scene_dir: Path, tmp_path: Path) -> None:
    target, log = tmp_path / "map.tif", tmp_path / "log.txt"
    args = ["predict", "--checkpoint", checkpoint, "--sar", scene_dir / "sar.tif", "-o", target,
            "--chunk-size", "16", "--no-progress"]
    with log.open("w") as f:
        proc = subprocess.Popen(cli(*args), stdout=f, stderr=f, env=ENV)
        kill_when(proc, lambda: any(tmp_path.glob(".map.*.stage.tif")), log)
    left = files(tmp_path) - {"log.txt"}
    assert left and all(n.startswith(f".map.{proc.pid}.") for n in left), left
    assert not target.exists()

    code, _, err = invoke(*args)
    assert code == 0, err
    assert files(tmp_path) == {"log.txt", "map.tif", "map.qml", "map.legend.json",
                               "map.stac.json"}


def _file_size_limit(size: int) -> Callable[[], None]:
    """A child's set-up that fails every write beyond ``size`` bytes, as a full disk does."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_a_write_failing_mid_way_gives_one_line_and_leaves_nothing(
        checkpoint: Path, scene_dir: Path, tmp_path: Path) -> None:
    def predict(out: Path, limit: Callable[[], None] | None) -> subprocess.CompletedProcess:
        out.mkdir()
        return subprocess.run(
            cli("predict", "--checkpoint", checkpoint, "--sar", scene_dir / "sar.tif", "-o",
                out / "m.tif", "--probabilities", out / "p.tif", "--no-progress"),
            env=ENV, capture_output=True, text=True, preexec_fn=limit, check=False)

    assert predict(tmp_path / "full", None).returncode == 0
    largest = (tmp_path / "full" / "p.tif").stat().st_size
    for size in (2_000, largest // 2):  # the first tiles; half the file
        out = tmp_path / f"limit{size}"
        result = predict(out, _file_size_limit(size))
        assert result.returncode == 1 and result.stdout == ""
        # One line: no GDAL or libtiff message, the output named, not its temporary.
        assert re.fullmatch(rf"Error: {re.escape(str(out))}/[mp]\.tif: writing failed "
                            r"\(File too large\); nothing was written there\n",
                            result.stderr), result.stderr
        assert list(out.iterdir()) == []


@pytest.fixture(scope="module")
def cut_scene(scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled GeoTIFF whose header opens but whose data stops halfway."""
    path = tmp_path_factory.mktemp("cut") / "cut.tif"
    rasterio.shutil.copy(scene_dir / "sar.tif", path, driver="COG", COMPRESS="NONE",
                         BLOCKSIZE=64)
    os.truncate(path, path.stat().st_size // 2)
    return path


def bad_predictions(tmp: Path, scene: Path, cut: Path) -> dict[str, tuple[list[object], str]]:
    """Case -> (predict arguments after the checkpoint, the error line expected)."""
    (tmp / "file.txt").write_text("a file")
    out = tmp / "out"
    return {
        "under /proc": (["-o", "/proc/map.tif"],
                        "Error: /proc/map.tif: cannot write in /proc ("),
        "under /sys": (["-o", "/sys/map.tif"], "Error: /sys/map.tif: cannot write in /sys ("),
        "parent is a file": (["-o", tmp / "file.txt" / "map.tif"],
                             f"Error: {tmp / 'file.txt' / 'map.tif'}: {tmp / 'file.txt'} is "
                             "not a directory"),
        "missing directory": (["-o", tmp / "none" / "map.tif"],
                              f"Error: {tmp / 'none' / 'map.tif'}: directory {tmp / 'none'} "
                              "does not exist; create it first"),
        "map = probabilities": (["-o", out / "m.tif", "--probabilities", out / "m.tif"],
                                f"Error: {out / 'm.tif'}: is both the map output and the "
                                "probabilities output; give each its own path"),
        "map = its style": (["-o", out / "m.qml"],
                            f"Error: {out / 'm.qml'}: is both the map output and the QGIS "
                            "style output; give each its own path"),
        "map = input": (["-o", scene, "--overwrite"],
                        f"Error: {scene}: is both the sar input and the map output; give "
                        "each its own path"),
        "truncated raster": (["-o", out / "m.tif", "--chunk-size", "64"],
                             f"Error: {cut}: reading rows "),
        "unreachable scheduler": (["-o", out / "m.tif", "--scheduler", "tcp://127.0.0.1:9",
                                   "--scheduler-timeout", "1"],
                                  "Error: tcp://127.0.0.1:9: no scheduler answered within 1 s"),
    }


CASES = ["under /proc", "under /sys", "parent is a file", "missing directory",
         "map = probabilities", "map = its style", "map = input", "truncated raster",
         "unreachable scheduler"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_predict_inputs_give_one_line_and_leave_nothing(
        case: str, checkpoint: Path, scene_dir: Path, cut_scene: Path, tmp_path: Path) -> None:
    scene = tmp_path / "sar.tif"
    shutil.copy(scene_dir / "sar.tif", scene)
    (tmp_path / "out").mkdir()
    args, expected = bad_predictions(tmp_path, scene, cut_scene)[case]
    source = cut_scene if case == "truncated raster" else scene
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    code, _, err = invoke("predict", "--checkpoint", checkpoint, "--sar", source, *args,
                          "--no-progress")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(expected), err
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing left


@pytest.mark.slow
def test_debug_shows_the_traceback(checkpoint: Path, scene_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--debug", "predict", "--checkpoint", str(checkpoint),
                                       "--sar", str(scene_dir / "sar.tif"),
                                       "-o", str(tmp_path / "none" / "map.tif")])
    assert result.exit_code == 1 and result.stderr == ""
    assert "does not exist" in str(result.exception)


@pytest.mark.slow
def test_uint8_probabilities_carry_a_gdal_scale(checkpoint: Path, scene_dir: Path,
                                                tmp_path: Path) -> None:
    code, _, err = invoke("predict", "--checkpoint", checkpoint, "--sar", scene_dir / "sar.tif",
                          "-o", tmp_path / "map.tif", "--probabilities", tmp_path / "p.tif",
                          "--probabilities-dtype", "uint8", "--confidence", "--no-progress")
    assert code == 0, err
    for name in ("p.tif", "map.confidence.tif"):
        with rasterio.open(tmp_path / name) as src:
            assert set(src.scales) == {1 / 250} and set(src.offsets) == {0.0}
            stored = src.read(1, masked=True)
            assert 0 < stored.max() * src.scales[0] <= 1.0


# --------------------------------------------------------------------------- temporaries
def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".map.{dead.pid}.abc_12.partial.tif",
             tmp_path / f".map.{dead.pid}.abc_12.partial.tif.stage.tif"]
    live = tmp_path / f".map.{os.getppid()}.xyz.partial.tif"  # our parent: alive
    other = tmp_path / f".map.5.{dead.pid}.abc.partial.tif"  # the target map.5.tif's
    for path in (*stale, live, other):
        path.write_bytes(b"")
    with atomic_path(tmp_path / "map.tif") as tmp:
        assert tmp.name.startswith(f".map.{os.getpid()}.")
        tmp.write_bytes(b"new")
    assert files(tmp_path) == {"map.tif", live.name, other.name}


# --------------------------------------------------------------------------- cluster
@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-worker process cluster whose worker runs in another working directory and
    lacks GDAL's VRT driver (this process registered its drivers long before)."""
    from distributed import LocalCluster

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("worker_cwd"))
    os.environ["GDAL_SKIP"] = "VRT"
    try:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    finally:
        os.chdir(here)
        del os.environ["GDAL_SKIP"]
    with cluster:
        yield cluster.scheduler_address


@pytest.mark.slow
def test_relative_scene_paths_reach_the_workers(checkpoint: Path, scene_dir: Path,
                                                scheduler: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(scene_dir.parent)
    code, _, err = invoke("predict", "--checkpoint", checkpoint, "--sar",
                          Path(scene_dir.name) / "sar.tif", "-o", tmp_path / "map.tif",
                          "--scheduler", scheduler, "--no-progress")
    assert code == 0, err
    with rasterio.open(tmp_path / "map.tif") as src:
        assert (src.read(1) != 255).any()


@pytest.mark.slow
def test_a_scene_the_workers_cannot_open_is_named(checkpoint: Path, scene_dir: Path,
                                                  scheduler: str, tmp_path: Path) -> None:
    vrt = tmp_path / "sar.vrt"  # this process reads it, the worker has no VRT driver
    rasterio.shutil.copy(scene_dir / "sar.tif", vrt, driver="VRT")
    code, _, err = invoke("predict", "--checkpoint", checkpoint, "--sar", vrt,
                          "-o", tmp_path / "map.tif", "--scheduler", scheduler, "--no-progress")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"Error: {vrt}: the Dask worker tcp://")
    assert "workers need the file at the same path" in err
    assert files(tmp_path) == {"sar.vrt"}


@pytest.fixture
def lone_workers(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A scheduler and two worker processes without nannies: a killed one stays dead."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        workers = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny",
             "--nthreads", "1", "--no-dashboard", "--local-directory", str(tmp_path)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        try:
            with Client(address) as client:
                client.wait_for_workers(2, timeout=120)
            yield address, workers
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_losing_dask_workers(lone_workers: tuple[str, list[subprocess.Popen[bytes]]],
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed while the cluster is set up: the map is made by the other, the same
    bytes as a local map. Every worker killed mid-map: one line naming the scheduler, and
    nothing left."""
    import distributed.scheduler
    from test_inference import saved_sar_model, texture, write_scene

    address, workers = lone_workers
    scene = write_scene(tmp_path / "sar.tif", texture(2, 96, seed=3) - 12, ["VV", "VH"])
    model = saved_sar_model(tmp_path / "sar.pt")
    args = ["predict", "--checkpoint", model, "--sar", scene, "--stride", 8, "--chunk-size",
            16, "--no-progress"]
    assert invoke(*args, "-o", tmp_path / "local.tif")[0] == 0
    scatter = distributed.scheduler.scatter_to_workers

    async def kill_first(*a: object, **k: object) -> object:
        # The scheduler has listed its workers: the first dies before it gets the model.
        monkeypatch.setattr(distributed.scheduler, "scatter_to_workers", scatter)
        workers[0].kill()
        workers[0].wait()
        return await scatter(*a, **k)

    monkeypatch.setattr(distributed.scheduler, "scatter_to_workers", kill_first)
    code, _, err = invoke(*args, "-o", tmp_path / "cluster.tif", "--scheduler", address)
    assert code == 0, err
    assert workers[0].poll() is not None  # it was killed while the map was set up
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "cluster.tif") as b:
        assert (a.read() == b.read()).all()

    def kill_all_once_mapping() -> None:
        from distributed import Client

        with Client(address) as client:
            while not any(client.processing().values()):
                time.sleep(0.005)
        workers[1].kill()

    killer = threading.Thread(target=kill_all_once_mapping)
    killer.start()
    before = files(tmp_path)
    code, _, err = invoke(*args, "-o", tmp_path / "lost.tif", "--scheduler", address)
    killer.join()
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"Error: {address}: the cluster lost its workers before the tasks "
                          "were done (every worker left)")
    assert files(tmp_path) == before

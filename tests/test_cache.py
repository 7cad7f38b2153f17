"""The decoded-image cache: in /dev/shm when it fits, else a disk-backed map, same results."""

import logging
import multiprocessing
import pickle
import tempfile
from pathlib import Path

import pytest
import torch

from discomkd_geo.config import load_config
from discomkd_geo.data import cache
from discomkd_geo.data.cache import SHM, SharedImageCache
from discomkd_geo.training.train import train

SPILL = "cannot hold the decoded images"


@pytest.fixture
def no_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared memory too small for any cache (as a container's 64 MB /dev/shm is for
    the whole EuroSat-MS-SAR)."""
    monkeypatch.setattr(cache, "shm_free_bytes", lambda: 0)
    cache._report_spill.cache_clear()


def _fill(images: SharedImageCache, index: int) -> None:
    images.get(index, lambda: torch.full((2, 8, 8), float(index)))


@pytest.mark.parametrize("shm", [True, False])
def test_forked_workers_fill_one_cache(shm: bool, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    if not shm:
        monkeypatch.setattr(cache, "shm_free_bytes", lambda: 0)
        cache._report_spill.cache_clear()
    elif cache.shm_free_bytes() < 2**20:
        pytest.skip(f"{SHM} has under 1 MiB free")
    with caplog.at_level(logging.INFO, logger="discomkd_geo"):
        images = SharedImageCache(3, (2, 8, 8))
        SharedImageCache(3, (2, 8, 8))  # a second cache: no second line
    assert images.location == (SHM if shm else tempfile.gettempdir())
    assert sum(SPILL in r.getMessage() for r in caplog.records) == (0 if shm else 1)
    worker = multiprocessing.get_context("fork").Process(target=_fill, args=(images, 1))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert images.filled.tolist() == [False, True, False]  # the worker's fill is shared
    assert torch.equal(images.get(1, lambda: torch.zeros(2, 8, 8)), torch.ones(2, 8, 8))
    batch = torch.tensor([1, 1])
    assert images.missing(torch.tensor([0, 1, 2])).tolist() == [0, 2]
    assert images.holds(batch) and not images.holds(torch.tensor([0, 1]))
    assert torch.equal(images.gather(batch), torch.ones(2, 2, 8, 8))  # one copy of the batch
    with pytest.raises(RuntimeError, match="does not hold"):
        images.gather(torch.tensor([1, 2]))
    assert not pickle.loads(pickle.dumps(images)).holds(batch)  # spawned: not shared


def test_gathered_batches_reuse_a_buffer_only_once_its_tensors_are_gone() -> None:
    images = SharedImageCache(4, (2, 8, 8))
    for i in range(4):
        images.get(i, lambda i=i: torch.full((2, 8, 8), float(i)))
    first = images.gather(torch.tensor([0, 1]))
    view = first[1:]  # a view keeps the buffer as the batch itself does
    pointer = first.data_ptr()
    del first
    kept = [images.gather(torch.tensor([2, 3])) for _ in range(3)]  # the other buffers
    assert pointer not in {k.data_ptr() for k in kept}
    assert images.gather(torch.tensor([2])).data_ptr() != pointer  # none free: new memory
    assert torch.equal(view, torch.ones(1, 2, 8, 8))  # never overwritten
    del view
    again = images.gather(torch.tensor([3, 2]))
    assert again.data_ptr() == pointer  # released with its last tensor, then reused
    assert torch.equal(again[:, 0, 0, 0], torch.tensor([3.0, 2.0]))
    assert all(torch.equal(k[:, 0, 0, 0], torch.tensor([2.0, 3.0])) for k in kept)


def test_fallback_without_space_anywhere_is_an_error(no_shm: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space"):  # not a SIGBUS at a later write
        SharedImageCache(3, (2, 8, 8))


@pytest.mark.slow
def test_training_from_the_disk_cache_gives_the_shared_memory_weights(
        eurosat_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(None, (
        "model.backbone=small_cnn", "model.width=8", "data.batch_size=16",
        "data.num_workers=0", "trainer.max_epochs=2", "trainer.accelerator=cpu",
        f"data.root={eurosat_root}"))
    train(config, tmp_path / "shm", progress=False)
    monkeypatch.setattr(cache, "shm_free_bytes", lambda: 0)
    cache._report_spill.cache_clear()
    with caplog.at_level(logging.INFO, logger="discomkd_geo"):
        train(config, tmp_path / "disk", progress=False)
    assert any(SPILL in r.getMessage() for r in caplog.records)
    for m in ("ms", "sar"):
        a, b = (torch.load(tmp_path / run / "checkpoints" / f"best-{m}.ckpt")["state_dict"]
                for run in ("shm", "disk"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""The decoded-image cache: in /dev/shm when it fits, else a disk-backed map, same results."""

import logging
import multiprocessing
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import default_collate

from discomkd_geo.config import load_config
from discomkd_geo.data import cache, eurosat
from discomkd_geo.data.cache import SHM, SharedImageCache
from discomkd_geo.data.eurosat import EuroSATMSSAR
from discomkd_geo.data.samplers import PairedDataset
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


def _shm_or_disk(shm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Map caches in /dev/shm (``shm``) or, as when it is too small, in files of TMPDIR."""
    if not shm:
        monkeypatch.setattr(cache, "shm_free_bytes", lambda: 0)
        cache._report_spill.cache_clear()
    elif cache.shm_free_bytes() < 2**20:
        pytest.skip(f"{SHM} has under 1 MiB free")


def _bits(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes: equal only if every value is the same float32, -0.0 and NaN too."""
    assert tensor.dtype == torch.float32
    return tensor.numpy().tobytes()


@pytest.mark.parametrize("shm", [True, False])
def test_digital_numbers_are_cached_as_uint16_and_handed_out_as_float32(
        shm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    _shm_or_disk(shm, monkeypatch)
    assert cache.cached_dtype("uint16") == cache.cached_dtype(np.uint8) == np.uint16
    assert cache.cached_dtype("float32") == cache.cached_dtype("int16") == np.float32
    rng = np.random.default_rng(0)
    dn = [torch.from_numpy(rng.integers(0, 2**16, (2, 8, 8), dtype=np.uint16)) for _ in range(3)]
    dn[0][0, 0, :2] = torch.tensor([0, 65535], dtype=torch.uint16)  # both ends of the range
    small = SharedImageCache(3, (2, 8, 8), np.uint16)
    wide = SharedImageCache(3, (2, 8, 8))  # float32, as every cache was before
    assert small.images is not None and small.images.dtype == torch.uint16
    assert small.images.nbytes == SharedImageCache.nbytes(3, (2, 8, 8), "uint16") == 768
    assert wide.images is not None and wide.images.nbytes == 2 * small.images.nbytes
    read = [image.numpy().astype(np.float32) for image in dn]  # what samples held before
    for images in (small, wide):
        assert images.location == (SHM if shm else tempfile.gettempdir())
        for i, image in enumerate(dn):
            assert _bits(images.get(i, lambda image=image: image)) == read[i].tobytes()
        assert bool(images.filled.all())
        assert _bits(images.get(1, lambda: torch.zeros(2, 8, 8))) == read[1].tobytes()
    index = torch.tensor([2, 0, 2, 1])
    expected = np.stack([read[i] for i in index.tolist()]).tobytes()
    assert _bits(small.gather(index)) == _bits(wide.gather(index)) == expected
    fraction = torch.full((2, 8, 8), 0.5)  # a value uint16 cannot hold: not cached
    assert torch.equal(small.get(0, lambda: torch.zeros(2, 8, 8)), dn[0].float())
    fresh = SharedImageCache(1, (2, 8, 8), np.uint16)
    assert torch.equal(fresh.get(0, lambda: fraction), fraction) and not bool(fresh.filled[0])


@pytest.mark.parametrize("shm", [True, False])
def test_eurosat_ms_cache_is_uint16_and_gathers_the_float32_cache_batches(
        eurosat_root: Path, shm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    _shm_or_disk(shm, monkeypatch)
    pairs = EuroSATMSSAR(eurosat_root, "val")
    # A pair: 13 MS bands of uint16 and 2 SAR bands of float32, 64 x 64 px.
    size = len(pairs) * 64 * 64 * (13 * 2 + 2 * 4)
    assert not pairs.cache_in_memory(size - 1)  # the estimate is the caches' real size
    assert pairs.cache_in_memory(size)
    assert sum(c.images.nbytes for c in pairs.caches.values()) == size
    assert pairs.caches["ms"].images.dtype == torch.uint16
    assert pairs.caches["sar"].images.dtype == torch.float32
    monkeypatch.setattr(eurosat, "cached_dtype", lambda source: np.dtype(np.float32))
    wide = EuroSATMSSAR(eurosat_root, "val")  # every image cached as float32, as before
    assert wide.cache_in_memory(2**30) and wide.caches["ms"].images.dtype == torch.float32
    indices = [5, 0, 5, 3, len(pairs) - 1]
    batches = []
    for dataset in (pairs, wide):
        paired = PairedDataset(dataset, ["ms", "sar"])
        assert paired.fill(indices)
        batches.append(paired.gather(indices))
        batches.append(default_collate([dataset[i] for i in indices]))  # from the caches
    for m in ("ms", "sar"):
        files = []
        for i in indices:
            with rasterio.open(pairs.paths[m][i]) as src:
                files.append(src.read().astype(np.float32))
        assert all(_bits(batch[f"image_{m}"]) == np.stack(files).tobytes() for batch in batches)
    assert all(c.location == (SHM if shm else tempfile.gettempdir())
               for c in pairs.caches.values())


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

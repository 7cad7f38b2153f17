"""Data layer: EuroSAT-MS-SAR pairing and splits, statistics, samplers, augmentations,
scene windows and the DataModule, on small GeoTIFFs written here."""

import ast
import math
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import get_args

import click
import numpy as np
import pytest
import rasterio
import torch
from matplotlib.figure import Figure
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from torch.utils.data import default_collate
from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

from discomkd_geo.config import AugmentConfig, load_config
from discomkd_geo.constants import EUROSAT_CLASSES, MS, S1_BANDS, S2_BANDS, SAR
from discomkd_geo.data.batching import BatchedDataset, BatchLoader, CachedBatch
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.eurosat import EuroSATMSSAR, EuroSATOptions
from discomkd_geo.data.normalization import compute_stats
from discomkd_geo.data.samplers import (
    ClassBalancedSampler,
    PairedDataset,
    UnpairedSampler,
    ValidWindowSampler,
)
from discomkd_geo.data.scenes import (
    LandCoverRaster,
    ScenePatches,
    Sentinel1Scene,
    Sentinel2Scene,
    scene_dataset,
)
from discomkd_geo.data.sensors import SAR_SCALES, SENSORS, SarUnits, sensor_of
from discomkd_geo.data.transforms import MultiModalAugmentation, RandomDihedral
from discomkd_geo.errors import DatasetNotFoundError, InputFileError

CLASSES = EUROSAT_CLASSES[:3]
PER_CLASS = 10
SIZE = 32
DIRS = {"eurosat": ("ds/images/remote_sensing/otherDatasets/sentinel_2/tif", "EuroSAT-SAR"),
        "copernicus": ("eurosat_s2/all_imgs", "eurosat_s1/all_imgs")}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _write(path: Path, data: np.ndarray, crs: str = "EPSG:32631", **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs,
                       transform=kwargs.pop("transform", from_origin(500000, 5000000, 10, 10)),
                       **kwargs) as dst:
        dst.write(data)


def make_dataset(root: Path, layout: str, seed: int = 0) -> Path:
    """EuroSat-MS-SAR in a published layout: 3 classes x 10 images, with split lists."""
    rng = np.random.default_rng(seed)
    ms_dir, sar_dir = DIRS[layout]
    names = []
    for c, name in enumerate(CLASSES):
        for n in range(1, PER_CLASS + 1):
            ms = rng.integers(500 + 400 * c, 3000 + 400 * c, (13, SIZE, SIZE)).astype(np.uint16)
            sar = rng.normal(-18 + 3 * c, 2, (2, SIZE, SIZE)).astype(np.float32)
            _write(root / ms_dir / name / f"{name}_{n}.tif", ms)
            _write(root / sar_dir / name / f"{name}_{n}.tif", sar)
            names.append(f"{name}_{n}")
    lists = {"train": names[0::3] + names[1::3], "val": names[2::6], "test": names[5::6]}
    for split, ids in lists.items():
        for folder in ([""] if layout == "eurosat" else ["eurosat_s2", "eurosat_s1"]):
            (root / folder / f"eurosat-{split}.txt").write_text(
                "".join(f"{i}.jpg\n" for i in ids))
    return root


@pytest.fixture(params=["eurosat", "copernicus"])
def root(request: pytest.FixtureRequest) -> Path:
    """Synthetic EuroSat-MS-SAR (10 per class) in each published layout."""
    return request.getfixturevalue(f"{request.param}_root")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"), "eurosat")


@pytest.fixture
def broken(tiny: Path, tmp_path: Path) -> Path:
    """A private copy of a tiny dataset to damage."""
    return Path(shutil.copytree(tiny, tmp_path / "copy"))


# -- EuroSATMSSAR -----------------------------------------------------------------------
def test_pairs_ms_and_sar_by_file_name(root: Path) -> None:
    ds = EuroSATMSSAR(root, "train")
    assert len(ds) == 70  # 70 % of 10 x 10
    for i in range(len(ds)):
        ms_path, sar_path = ds.paths["ms"][i], ds.paths["sar"][i]
        assert Path(ms_path).name == Path(sar_path).name == f"{ds.ids[i]}.tif"
        assert Path(ms_path).parent.name == EUROSAT_CLASSES[ds.targets[i]]
        assert "s2" in ms_path or "sentinel_2" in ms_path
    sample = ds[0]
    with rasterio.open(ds.paths["sar"][0]) as src:
        assert torch.equal(sample["image_sar"], torch.from_numpy(src.read()))
    assert sample["image_ms"].shape == (13, 64, 64)
    assert sample["image_ms"].dtype == sample["image_sar"].dtype == torch.float32
    assert sample["label"].dtype == torch.long and sample["id"] == ds.ids[0]


def test_random_split_disjoint_stratified_reproducible(root: Path) -> None:
    seed3 = EuroSATOptions(split_seed=3)
    splits = {s: EuroSATMSSAR(root, s, options=seed3) for s in ("train", "val", "test")}
    ids = {s: set(ds.ids) for s, ds in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert len(set().union(*ids.values())) == 100
    for s, expected in {"train": 7, "val": 1, "test": 2}.items():
        assert Counter(splits[s].targets) == dict.fromkeys(range(10), expected)
    assert EuroSATMSSAR(root, "train", options=seed3).ids == splits["train"].ids
    seed4 = EuroSATOptions(split_seed=4)
    assert set(EuroSATMSSAR(root, "train", options=seed4).ids) != ids["train"]


def test_published_split_lists(root: Path) -> None:
    lists = sorted(root.rglob("eurosat-val.txt"))
    assert lists
    listed = {line.removesuffix(".jpg") for line in lists[0].read_text().split()}
    ds = EuroSATMSSAR(root, "val", options=EuroSATOptions(split_mode="published"))
    assert set(ds.ids) == listed and len(ds) == 20
    train = EuroSATMSSAR(root, "train", options=EuroSATOptions(split_mode="published"))
    assert not set(train.ids) & listed


def test_published_lists_of_tiny_dataset(tiny: Path) -> None:
    names = [f"{c}_{n}" for c in CLASSES for n in range(1, PER_CLASS + 1)]
    ds = EuroSATMSSAR(tiny, "val", options=EuroSATOptions(split_mode="published"))
    assert sorted(ds.ids) == sorted(names[2::6])


def test_band_selection(eurosat_root: Path) -> None:
    ds = EuroSATMSSAR(eurosat_root, "test", modalities=("ms",),
                      bands={"ms": ["B04", "B03", "B02"]})
    image = ds[1]["image_ms"]
    with rasterio.open(ds.paths["ms"][1]) as src:
        assert torch.equal(image, torch.from_numpy(src.read([4, 3, 2]).astype(np.float32)))
    assert "image_sar" not in ds[1]
    with pytest.raises(ValueError, match="B99"):
        EuroSATMSSAR(eurosat_root, bands={"ms": ["B99"]})


def test_plot_returns_figure(eurosat_root: Path) -> None:
    ds = EuroSATMSSAR(eurosat_root, "test")
    fig = ds.plot({**ds[0], "prediction": torch.tensor(1)})
    assert isinstance(fig, Figure) and len(fig.axes) == 3


# -- errors name the file -----------------------------------------------------------------
def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nowhere")):
        EuroSATMSSAR(tmp_path / "nowhere")


def test_unpaired_files_counted_and_droppable(broken: Path) -> None:
    sar = broken / DIRS["eurosat"][1]
    for n in (1, 2):
        (sar / CLASSES[1] / f"{CLASSES[1]}_{n}.tif").unlink()
    split = {"train": set(), "val": set(), "test": set()}
    for s in split:
        split[s] = set(EuroSATMSSAR(broken, s, modalities=("ms",)).ids)
    missing = {f"{CLASSES[1]}_1", f"{CLASSES[1]}_2"}
    s = next(s for s in split if missing & split[s])
    with pytest.raises(InputFileError, match="pass drop_unpaired=True") as err:
        EuroSATMSSAR(broken, s)
    counts = ", ".join(f"{len(missing & split[t])} in {t}" for t in split)
    assert f"unpaired images: {counts};" in str(err.value)
    assert Path(err.value.path).stem in missing and err.value.path.endswith(".tif")
    dropped = EuroSATMSSAR(broken, s, options=EuroSATOptions(drop_unpaired=True))
    assert set(dropped.ids) == split[s] - missing


def _first_ms(root: Path) -> Path:
    return root / DIRS["eurosat"][0] / CLASSES[0] / f"{CLASSES[0]}_1.tif"


@pytest.mark.parametrize("damage, problem", [
    ("bands", "has 12 bands, expected 13"),
    ("dtype", "has dtype float32, expected uint16"),
    ("garbage", "unreadable raster"),
])
def test_bad_file_named(broken: Path, damage: str, problem: str) -> None:
    path = _first_ms(broken)
    if damage == "bands":
        _write(path, np.ones((12, SIZE, SIZE), np.uint16))
    elif damage == "dtype":
        _write(path, np.ones((13, SIZE, SIZE), np.float32))
    else:
        path.write_bytes(b"not a tiff")
    split = next(s for s in ("train", "val", "test")
                 if path.stem in EuroSATMSSAR(broken, s, modalities=("sar",)).ids)
    with pytest.raises(InputFileError, match=problem) as err:
        ds = EuroSATMSSAR(broken, split)
        for i in range(len(ds)):
            ds[i]
    assert err.value.path == str(path)


# -- statistics ---------------------------------------------------------------------------
def _train_pixels(root: Path, modality: str) -> np.ndarray:
    ds = EuroSATMSSAR(root, "train", modalities=(modality,))
    return np.stack([ds[i][f"image_{modality}"].numpy() for i in range(len(ds))])


@pytest.mark.slow
@pytest.mark.parametrize("modality, tol", [("ms", 0), ("sar", 0.01)])
def test_statistics_against_numpy(copernicus_root: Path, modality: str, tol: float) -> None:
    """The sensor's histogram: exact on integer DN, 0.01 dB bins for SAR."""
    ds = EuroSATMSSAR(copernicus_root, "train", modalities=(modality,))
    bands = ds.bands[modality]
    pixels = _train_pixels(copernicus_root, modality).transpose(1, 0, 2, 3).reshape(len(bands), -1)
    pct = compute_stats(ds, modality, bands, "percentile", 2, 98, batch_size=5, progress=False)
    np.testing.assert_allclose(pct.shift, np.percentile(pixels, 2, axis=1), atol=tol)
    np.testing.assert_allclose(np.add(pct.shift, pct.scale),
                               np.percentile(pixels, 98, axis=1), atol=tol)
    ms = compute_stats(ds, modality, bands, "meanstd", batch_size=7, progress=False)
    np.testing.assert_allclose(ms.shift, pixels.astype(np.float64).mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(ms.scale, pixels.astype(np.float64).std(axis=1), rtol=1e-9)


# -- sensor profiles ------------------------------------------------------------------------
def test_one_sensor_profile_per_modality() -> None:
    assert list(SENSORS) == [MS, SAR]
    for modality, sensor in SENSORS.items():
        assert sensor.modality == modality and sensor_of(modality) is sensor
        assert pickle.loads(pickle.dumps(sensor)) is sensor  # a Dask worker's is the same
    # The names of the units that checkpoints and exports store, unchanged.
    assert (SENSORS[MS].bands, SENSORS[MS].units) == (S2_BANDS, "dn")
    assert (SENSORS[SAR].bands, SENSORS[SAR].units) == (S1_BANDS, "dB")
    assert EuroSATMSSAR.units == {MS: "dn", SAR: "dB"}
    with pytest.raises(ValueError, match="no sensor profile for modality 'rgb'; known: ms, sar"):
        sensor_of("rgb")
    # Decades: differences of dB / 10; log10 ratios of reflectance (NaN: not positive).
    assert SENSORS[SAR].decades(-5.0, -15.0) == pytest.approx(1.0)
    assert SENSORS[MS].decades(200.0, 2000.0) == pytest.approx(-1.0)
    assert math.isnan(SENSORS[MS].decades(-10.0, 200.0))


def test_sar_storages_and_hyp3_names() -> None:
    """ASF HyP3 RTC file names state the scale: p(ower), a(mplitude), d(ecibel)."""
    sar = SENSORS[SAR]
    assert get_args(SarUnits) == tuple(s.name for s in sar.sar_scales) == tuple(SAR_SCALES)
    name = "S1A_IW_20230601T053000_DVP_RTC30_G_g{}uned_1A2B_VV.tif"
    assert [sar.sar_units(None, [name.format(c)]) for c in "pad"] == ["linear", "amplitude",
                                                                      "db"]
    assert sar.sar_units(None, [name.format("p"), name.format("a")]) == "db"  # they disagree
    assert sar.sar_units("amplitude", [name.format("p")]) == "amplitude"  # asked wins
    assert SENSORS[MS].sar_units(None, [name.format("p")]) is None and not SENSORS[MS].sar_scales


def test_mask_kinds_agree_with_the_mask_readers_and_the_cli() -> None:
    """The profiles name kinds that inference.masks defines, and the CLI's choices are the
    profiles' (read at --help without numpy), so the three cannot drift apart."""
    from discomkd_geo.cli import main
    from discomkd_geo.inference.masks import MASK_KINDS, CodedMask

    coded = [name for name, kind in MASK_KINDS.items() if isinstance(kind, CodedMask)]
    assert list(SENSORS[MS].mask_files) == coded  # an MS scene takes every kind of file
    assert SENSORS[SAR].mask_files == ("binary",) and SENSORS[SAR].mask_detector is None
    detectors = {s.mask_detector for s in SENSORS.values()} - {None}
    assert set(MASK_KINDS) - set(coded) == detectors
    choices = {p.name: list(p.type.choices) for p in main.commands["predict"].params
               if isinstance(p.type, click.Choice)}
    assert choices["ms_mask_kind"] == coded
    assert choices["sar_units"] == list(get_args(SarUnits))
    code = "import sys, discomkd_geo.cli; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def _units_tests(tree: ast.AST) -> list[ast.AST]:
    """Where code tells sensors apart by a units string: ``units == "dB"``, ``{"dn": ...}``."""
    names = {s.units for s in SENSORS.values()}

    def is_units(node: ast.AST | None) -> bool:
        items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
        return any(isinstance(n, ast.Constant) and n.value in names for n in items)

    return [node for node in ast.walk(tree)
            if (isinstance(node, ast.Compare) and any(map(is_units, [node.left,
                                                                     *node.comparators])))
            or (isinstance(node, ast.Dict) and any(map(is_units, node.keys)))]


def test_no_code_tells_sensors_apart_by_a_units_string() -> None:
    """What depends on the sensor is asked of its profile (data/sensors.py)."""
    sample = 'a = info.units == "dB"\nb = {"dn": 1, "dB": 2}\nc = units in ("dn", "x")\nd = 1'
    assert len(_units_tests(ast.parse(sample))) == 3  # the check finds what it forbids
    package = Path(__file__).parents[1] / "discomkd_geo"
    found = [f"{path.relative_to(package)}:{node.lineno} {ast.unparse(node)}"
             for path in sorted(package.rglob("*.py"))
             for node in _units_tests(ast.parse(path.read_text()))]
    assert not found, "ask the sensor profile (data/sensors.py) instead: " + str(found)


# -- samplers -----------------------------------------------------------------------------
def test_class_balanced_sampler_balances_imbalanced_classes() -> None:
    targets = [0] * 50 + [1] * 5 + [2] * 15
    sampler = ClassBalancedSampler(targets, 3000, torch.Generator().manual_seed(0))
    counts = Counter(targets[i] for i in sampler)
    assert counts == {0: 1000, 1: 1000, 2: 1000}
    first = list(ClassBalancedSampler(targets, 15, torch.Generator().manual_seed(1)))
    minority = [i for i in first if targets[i] == 1]
    assert sorted(minority) == list(range(50, 55))  # a class is used up before repeating


def test_unpaired_sampler_draws_modalities_independently() -> None:
    a = ClassBalancedSampler([0] * 10 + [1] * 30, 400, torch.Generator().manual_seed(0))
    b = ClassBalancedSampler([0] * 20 + [1] * 4, 400, torch.Generator().manual_seed(1))
    pairs = list(UnpairedSampler({"ms": a, "sar": b}))
    la = [int(i >= 10) for i, _ in pairs]
    lb = [int(j >= 20) for _, j in pairs]
    assert Counter(la) == Counter(lb) == {0: 200, 1: 200}
    agreement = np.mean(np.equal(la, lb))
    assert 0.35 < agreement < 0.65  # independent draws agree about half the time
    with pytest.raises(ValueError, match="one length"):
        UnpairedSampler({"ms": a, "sar": ClassBalancedSampler([0], 3)})


# -- augmentations -------------------------------------------------------------------------
def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augmentation_keeps_labels_shapes_dtypes(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    aug = MultiModalAugmentation(["ms", "sar"], AugmentConfig(intensity=False))
    x = torch.rand(32, 13, 16, 16, dtype=dtype, device=device)
    labels = torch.arange(32, device=device)
    batch = {"image_ms": x, "image_sar": x[:, 3:5].clone(), "label_ms": labels,
             "label_sar": labels.clone()}
    out = aug(batch, paired=True)
    assert torch.equal(out["label_ms"], labels) and torch.equal(out["label_sar"], labels)
    for m, c in (("ms", 13), ("sar", 2)):
        assert out[f"image_{m}"].shape == (32, c, 16, 16)
        assert out[f"image_{m}"].dtype == dtype and out[f"image_{m}"].device == x.device
    # flips and quarter turns move pixels without interpolating them
    assert all(any(torch.equal(out["image_ms"][i], d) for d in _dihedral(x[i]))
               for i in range(32))
    assert sum(not torch.equal(out["image_ms"][i], x[i]) for i in range(32)) > 16
    assert torch.equal(out["image_ms"][:, 3:5], out["image_sar"])  # shared geometry
    independent = aug(batch, paired=False)
    assert not torch.equal(independent["image_ms"][:, 3:5], independent["image_sar"])


@pytest.mark.parametrize("device", DEVICES)
def test_dihedral_matrices_follow_the_pixels(device: str) -> None:
    torch.manual_seed(1)
    dihedral = RandomDihedral(flip_p=0.5, turn_p=0.75)
    x = torch.zeros(64, 1, 8, 8, device=device)
    x[:, 0, 2, 1] = 1.0  # row 2, column 1
    out = dihedral(x)
    moved = dihedral.transform_matrix @ torch.tensor([1.0, 2.0, 1.0], device=device)
    rows, cols = torch.nonzero(out[:, 0] == 1, as_tuple=True)[1:]
    assert torch.equal(cols.float(), moved[:, 0]) and torch.equal(rows.float(), moved[:, 1])
    assert len(set(zip(cols.tolist(), rows.tolist(), strict=True))) == 8  # all 8 placements
    with pytest.raises(ValueError, match="square"):
        RandomDihedral(turn_p=1.0)(torch.zeros(2, 1, 4, 6))


@pytest.mark.parametrize("device", DEVICES)
def test_intensity_jitter_is_physical(device: str) -> None:
    torch.manual_seed(0)
    from discomkd_geo.data.normalization import BandStats

    stats = {"ms": BandStats("percentile", list(S2_BANDS), [0.0] * 13, [1.0] * 13),
             "sar": BandStats("percentile", ["VV", "VH"], [-25.0, -30.0], [20.0, 10.0])}
    aug = MultiModalAugmentation(["ms", "sar"], AugmentConfig(flips=False, rot90=False, p=1.0),
                                 stats)
    ms = torch.full((64, 13, 4, 4), 0.5, device=device)
    sar = torch.zeros(64, 2, 4, 4, device=device)
    out = aug({"image_ms": ms, "image_sar": sar}, paired=True)
    gain_offset = out["image_ms"][..., 0, 0]
    assert gain_offset.std(dim=1).min() > 0  # every band jittered on its own
    assert torch.all((gain_offset - 0.5).abs() <= 0.5 * 0.1 + 0.05 + 1e-6)
    shift_db = out["image_sar"][..., 0, 0] * torch.tensor([20.0, 10.0], device=device)
    assert torch.all(shift_db.abs() <= 1.5 + 1e-5)  # 1 dB common + 0.5 dB per band
    assert torch.all(out["image_sar"] == out["image_sar"][..., :1, :1])  # flat per band


# -- DataModule -----------------------------------------------------------------------------
def _config(root: Path, *overrides: str):
    return load_config(None, (f"data.root={root}", "data.batch_size=8", "data.num_workers=0",
                              *overrides)).data


@pytest.mark.slow
@pytest.mark.parametrize("paired", [True, False])
def test_datamodule_batch_contract(eurosat_root: Path, paired: bool) -> None:
    dm = MSSARDataModule(_config(eurosat_root, f"data.paired={paired}"), seed=0)
    dm.setup("fit")
    assert dm.modalities == {"ms": list(S2_BANDS), "sar": ["VV", "VH"]}
    assert dm.units == {"ms": "dn", "sar": "dB"} and dm.classes == list(EUROSAT_CLASSES)
    assert dm.patch_size == 64 and dm.pixel_size == 10.0 and len(dm.colors) == 10
    batches = list(dm.train_dataloader())
    assert [len(b["label_ms"]) for b in batches] == [8] * 8 + [6]  # 70: the last 6 trained
    for batch in batches:
        out = dm.preprocess(batch, augment=True)
        n = len(batch["label_ms"])
        for m, c in (("ms", 13), ("sar", 2)):
            assert out[f"image_{m}"].shape == (n, c, 64, 64)
            assert out[f"image_{m}"].dtype == torch.float32
            assert out[f"label_{m}"].shape == (n,) and out[f"label_{m}"].dtype == torch.long
        if paired:
            assert torch.equal(batch["label_ms"], batch["label_sar"])
            assert batch["id"] is not None
    if not paired:
        assert any(not torch.equal(b["label_ms"], b["label_sar"]) for b in batches)
        assert any(b["id_ms"] != b["id_sar"] for b in batches)
    val = next(iter(dm.val_dataloader()))
    out = dm.preprocess(val, augment=False)
    assert torch.equal(val["label_ms"], val["label_sar"])
    assert float(out["image_ms"].min()) >= 0.0 and float(out["image_ms"].max()) <= 1.0


@pytest.mark.parametrize("settings", [("data.paired=true",), ("data.paired=false",),
                                      ("data.paired=true", "data.mosaic=true")])
def test_only_a_last_batch_of_one_is_dropped(eurosat_root: Path,
                                             settings: tuple[str, ...]) -> None:
    # 70 training pairs (17 mosaics of four): 3 * 23 + 1 drops one, 5 * 13 + 5 trains all.
    mosaic = "data.mosaic=true" in settings
    for batch_size, trained in ((23, 69), (13, 70)) if not mosaic else ((64, 16), (24, 17)):
        dm = MSSARDataModule(_config(eurosat_root, f"data.batch_size={batch_size}",
                                     *settings), seed=0)
        sizes = [len(b["label_ms"]) for b in dm.train_dataloader()]
        assert sum(sizes) == trained and min(sizes) > 1, (batch_size, sizes)
        assert dm.train_batches() == len(sizes)  # the trainer's logging interval


def test_cached_images_give_the_same_batches_without_rereading(
        eurosat_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(eurosat_root, tmp_path / "eurosat"))
    settings = ("data.paired=true", "data.batch_size=10", "data.num_workers=2")
    read = MSSARDataModule(_config(root, *settings, "data.cache_mib=0"), seed=0)
    cached = MSSARDataModule(_config(root, *settings), seed=0)
    too_big = MSSARDataModule(_config(root, *settings, "data.cache_mib=1"), seed=0)
    for dm in (read, cached, too_big):
        dm.setup("fit")
    assert not read.train_dataset.dataset.caches and not too_big.train_dataset.dataset.caches
    train = cached.train_dataset.dataset
    assert set(train.caches) == {"ms", "sar"}  # 70 pairs: 17 MiB
    loaders = read.train_dataloader(), cached.train_dataloader()
    first = [list(loader) for loader in loaders]
    assert all(bool(c.filled.all()) for c in train.caches.values())  # filled by the workers
    for tif in root.rglob("*.tif"):  # the second epoch must not need a file
        tif.unlink()
    second = list(loaders[1])
    with pytest.raises((InputFileError, RuntimeError), match="unreadable raster"):
        list(loaders[0])  # the same epoch, read from the files: they are gone
    for a, b in zip(first[0], first[1], strict=True):
        assert a["id"] == b["id"]
        assert all(torch.equal(a[k], b[k]) for k in ("image_ms", "image_sar", "label_ms"))
    assert [b["id"] for b in second] != [b["id"] for b in first[1]]  # a new shuffle
    expected = {i: b for batch in first[0] for i, b in zip(batch["id"], batch["image_ms"],
                                                            strict=True)}
    assert all(torch.equal(expected[i], image) for batch in second
               for i, image in zip(batch["id"], batch["image_ms"], strict=True))


def _same_batch(a: dict, b: dict) -> bool:
    """Same keys in the same order, equal tensors of one dtype, equal id lists."""
    return list(a) == list(b) and all(
        torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype if isinstance(a[k], torch.Tensor)
        else a[k] == b[k] for k in a)


@pytest.mark.parametrize("paired, workers, cache_mib",
                         [(True, 0, 512), (False, 0, 512), (True, 2, 512), (False, 2, 512),
                          (False, 0, 0)])
def test_gathered_batches_are_the_per_sample_batches(eurosat_root: Path, paired: bool,
                                                     workers: int, cache_mib: int) -> None:
    # 70 training pairs in batches of 16: the last batch of 6 is kept, as a plain loader.
    settings = (f"data.paired={paired}", "data.batch_size=16", f"data.num_workers={workers}",
                f"data.cache_mib={cache_mib}")
    per_sample, gathered = (MSSARDataModule(_config(eurosat_root, *settings), seed=3)
                            for _ in range(2))
    per_sample.gather_batches = False
    loaders = []
    for dm in (per_sample, gathered):
        dm.setup("fit")
        loaders.append((dm.train_dataloader(), dm.val_dataloader()))
    assert isinstance(loaders[1][0], BatchLoader) and not isinstance(loaders[0][0], BatchLoader)
    for _ in range(2):  # the first epoch fills the caches, the second reads them only
        for old, new in zip(*loaders, strict=True):
            a, b = list(old), list(new)
            assert len(a) == len(b) == len(new)
            assert all(_same_batch(x, y) for x, y in zip(a, b, strict=True))
    caches = [c for ds in (gathered.train_dataset, gathered.val_dataset)
              for d in getattr(ds, "datasets", {"": getattr(ds, "dataset", None)}).values()
              for c in getattr(d, "caches", {}).values()]
    assert bool(caches) == bool(cache_mib) and all(bool(c.filled.all()) for c in caches)


def test_a_worker_sends_a_cached_batch_as_its_indices(eurosat_root: Path) -> None:
    pairs = EuroSATMSSAR(eurosat_root, "val")
    pairs.cache_in_memory(2**30)
    batched = BatchedDataset(PairedDataset(pairs, ["ms", "sar"]))
    indices = [5, 0, 5, 3]
    expected = default_collate([batched.dataset[i] for i in indices])
    sent = batched[indices]  # reads the images into the caches, returns the indices
    assert isinstance(sent, CachedBatch) and len(pickle.dumps(sent)) < 500
    assert all(bool(c.filled[indices].all()) for c in pairs.caches.values())
    assert _same_batch(sent.resolve(), expected)
    spawned = pickle.loads(pickle.dumps(batched))  # a spawned worker: no shared map
    assert _same_batch(spawned[indices], expected)  # read and collated there
    uncached = BatchedDataset(PairedDataset(EuroSATMSSAR(eurosat_root, "val"), ["ms", "sar"]))
    assert _same_batch(uncached[indices], expected)


@pytest.mark.cuda
def test_cached_batches_are_gathered_into_pinned_memory(eurosat_root: Path) -> None:
    dm = MSSARDataModule(_config(eurosat_root, "data.num_workers=2"), seed=0)
    dm.setup("fit")
    batched = BatchedDataset(dm.train_dataset)
    sent = batched[[(i, 7 - i) for i in range(8)]]  # unpaired: one index per modality
    assert isinstance(sent, CachedBatch)
    pinned = sent.pin_memory()  # what the loader's pinning thread calls
    assert all(pinned[k].is_pinned() for k in pinned if isinstance(pinned[k], torch.Tensor))
    assert _same_batch(pinned, sent.resolve())


def test_datamodule_stats_from_train_split_and_test_alone(tiny: Path) -> None:
    config = _config(tiny)
    fit = MSSARDataModule(config)
    fit.setup("fit")
    pixels = _train_pixels(tiny, "sar").transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(fit.stats["sar"].shift, np.percentile(pixels, 2, axis=1),
                               atol=0.01)
    test = MSSARDataModule(config)
    test.setup("test")
    assert test.stats == fit.stats and test.train_dataset is None
    assert len(next(iter(test.test_dataloader()))["label_sar"]) == 6
    given = MSSARDataModule(_config(tiny, "data.modalities.ms.bands=[B02]"),
                            stats=fit.stats)
    given.setup("test")
    assert given.stats["ms"].bands == ["B02"]
    assert given.stats["ms"].shift == [fit.stats["ms"].shift[1]]


# -- scenes -------------------------------------------------------------------------------------
SCENE = 128
MARGIN = 16
CELL = 32
SCENE_ORIGIN = (500000.0, 5000000.0)


def _truth() -> np.ndarray:
    rows, cols = np.indices((SCENE, SCENE))
    codes = ((rows // CELL) * 3 + (cols // CELL) * 2) % 4
    codes[:, :MARGIN] = 255  # nodata margin on the west
    return codes.astype(np.uint8)


def _vv(codes: np.ndarray) -> np.ndarray:
    return (-20.0 + 4.0 * codes).astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MS and labels on UTM 31N at 10 m; SAR on ETRS89-LAEA at 20 m."""
    out = tmp_path_factory.mktemp("scene")
    codes = _truth()
    transform = from_origin(*SCENE_ORIGIN, 10, 10)
    ms = np.stack([(codes.astype(np.uint16) + 1) * 1000 + b for b in range(13)])
    ms[:, codes == 255] = 0
    _write(out / "ms.tif", ms, transform=transform, nodata=0)
    _write(out / "truth.tif", codes[None], transform=transform, nodata=255)
    sar_ms_grid = np.stack([_vv(codes), _vv(codes) - 6])
    sar_ms_grid[:, codes == 255] = np.nan
    bounds = rasterio.transform.array_bounds(SCENE, SCENE, transform)
    dst_t, w, h = calculate_default_transform("EPSG:32631", "EPSG:3035", SCENE, SCENE,
                                              *bounds, resolution=20)
    sar = np.full((2, h, w), np.nan, np.float32)
    reproject(sar_ms_grid, sar, src_transform=transform, src_crs="EPSG:32631",
              dst_transform=dst_t, dst_crs="EPSG:3035", resampling=Resampling.nearest,
              src_nodata=np.nan, dst_nodata=np.nan)
    _write(out / "sar.tif", sar, crs="EPSG:3035", transform=dst_t, nodata=np.nan)
    return out


def _patches(scene: Path) -> ScenePatches:
    return ScenePatches({"ms": Sentinel2Scene(scene / "ms.tif"),
                         "sar": Sentinel1Scene(scene / "sar.tif")},
                        LandCoverRaster(scene / "truth.tif"))


def test_scene_layers_and_the_engine_share_the_saturation_rule(scene: Path) -> None:
    """Training scenes skip what the engine leaves unmapped: a Sentinel-2 band at its
    saturation code (DN 65535) or nodata makes a pixel invalid, through the one rule of
    the sensor profile; class codes have no sensor and only their nodata."""
    from discomkd_geo.data.sensors import SENSORS

    with rasterio.open(scene / "ms.tif") as src:
        data = src.read()
    layer = Sentinel2Scene(scene / "ms.tif")
    before = layer.valid_mask(data)
    assert before[60:62, 60:63].all() and before[70, 70]
    data[4, 60:62, 60:63] = 65535
    data[:, 70, 70] = 0
    expected = ~(data == 65535).any(axis=0) & ~(data == 0).any(axis=0)
    assert layer.sensor is SENSORS[MS]
    assert (layer.valid_mask(data) == expected).all()
    assert (before & ~expected).sum() == 7
    assert (SENSORS[MS].unsaturated(data, np.ones(data.shape[1:], bool))
            == ~(data == 65535).any(axis=0)).all()
    codes = np.full((1, 4, 4), 3, np.uint8)
    codes[0, 0, 0] = LandCoverRaster.nodata
    assert LandCoverRaster.sensor is None
    assert LandCoverRaster(scene / "truth.tif").valid_mask(codes).sum() == 15


def test_scene_windows_are_coregistered(scene: Path) -> None:
    joined = scene_dataset(Sentinel2Scene(scene / "ms.tif"), Sentinel1Scene(scene / "sar.tif"),
                           LandCoverRaster(scene / "truth.tif"))
    assert joined.crs == rasterio.crs.CRS.from_epsg(32631) and joined.res == (10, 10)
    generator = torch.Generator().manual_seed(0)
    sampler = RandomGeoSampler(joined, size=32, length=6, generator=generator)
    for query in sampler:
        sample = joined[query]
        x, y = query[0], query[1]
        assert sample["bounds"] == query
        assert (x.stop - x.start, y.stop - y.start) == (320, 320)
        assert sample["image_ms"].shape == (13, 32, 32) and sample["image_sar"].shape == (2, 32, 32)
        codes = sample["mask"]
        inside = codes != 255
        # MS pixels are exact on their own grid: the class code is encoded in the DN
        ms_codes = (sample["image_ms"][0] / 1000 - 1).round().long()
        assert torch.equal(ms_codes[inside], codes[inside])
        # the SAR pixels, warped from another CRS and resolution, show the same regions
        vv = sample["image_sar"][0]
        ok = inside & torch.isfinite(vv)
        close = (vv[ok] - torch.from_numpy(_vv(codes[ok].numpy()))).abs() < 1.0
        assert close.float().mean() > 0.8


def test_valid_window_sampler_skips_nodata_windows(scene: Path) -> None:
    patches = _patches(scene)
    west = SCENE_ORIGIN[0] + MARGIN * 10
    valid = patches.valid_area
    assert valid.bounds[0] == pytest.approx(west, abs=20)
    grid = GridGeoSampler(patches, size=32, stride=32)
    kept = list(ValidWindowSampler(grid, valid, max_nodata=0.1))
    assert 0 < len(kept) < len(grid)
    for query in kept:
        sample = patches[query]
        assert float((sample["image_ms"][0] == 0).float().mean()) <= 0.1
        assert torch.isfinite(sample["image_sar"]).all()
        assert 0 <= int(sample["label"]) < 4


@pytest.mark.slow
def test_scene_datamodule(scene: Path) -> None:
    config = _config(scene, "data.dataset=scenes", "data.paired=true",
                     f"data.scenes.paths={{ms: {scene / 'ms.tif'}, sar: {scene / 'sar.tif'}}}",
                     f"data.scenes.labels={scene / 'truth.tif'}", "data.scenes.patch_size=16",
                     "data.scenes.samples_per_epoch=16")
    dm = MSSARDataModule(config)
    dm.setup("fit")
    assert dm.patch_size == 16 and dm.pixel_size == 10.0
    batch = dm.preprocess(next(iter(dm.train_dataloader())), augment=True)
    assert batch["image_ms"].shape == (8, 13, 16, 16) and batch["image_sar"].shape == (8, 2, 16, 16)
    assert torch.isfinite(batch["image_sar"]).all()
    corners = {name: {(w[0].start, w[1].start) for w in ds.dataset.windows}
               for name, ds in (("train", dm.train_dataset), ("val", dm.val_dataset),
                                ("test", dm.test_dataset))}
    assert all(corners.values())
    assert not corners["train"] & corners["val"] and not corners["train"] & corners["test"]
    assert not corners["val"] & corners["test"]
    val_ids = {i for b in dm.val_dataloader() for i in b["id"]}
    assert len(val_ids) == len(corners["val"])


def test_scene_band_count_error_names_file(scene: Path, tmp_path: Path) -> None:
    bad = tmp_path / "s1.tif"
    _write(bad, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(InputFileError, match="has 3 bands, expected 2") as err:
        Sentinel1Scene(bad)
    assert err.value.path == str(bad)
    garbage = tmp_path / "s2.tif"
    garbage.write_bytes(b"nope")
    with pytest.raises(InputFileError, match="unreadable") as err:
        Sentinel2Scene(garbage)
    assert err.value.path == str(garbage)


def test_linear_sar_converted_to_db(scene: Path, tmp_path: Path) -> None:
    with rasterio.open(scene / "sar.tif") as src:
        db, profile = src.read(), src.profile
    with rasterio.open(tmp_path / "lin.tif", "w", **profile) as dst:
        dst.write((10 ** (db / 10)).astype(np.float32))
    db_scene = Sentinel1Scene(scene / "sar.tif")
    x, y, t = db_scene.bounds
    cx, cy = (x.start + x.stop) / 2, (y.start + y.stop) / 2
    query = (slice(cx - 160, cx + 160), slice(cy - 160, cy + 160), t)
    a = db_scene[query]["image_sar"]
    b = Sentinel1Scene(tmp_path / "lin.tif", db=False)[query]["image_sar"]
    ok = torch.isfinite(a)
    assert ok.any() and torch.allclose(a[ok], b[ok], atol=1e-3)
    assert torch.equal(torch.isfinite(b), ok)  # NaN nodata stays nodata


@pytest.mark.slow
def test_synthetic_scene_through_datamodule(scene_dir: Path) -> None:
    """The generator's scene: SAR on EPSG:4326, nodata margins in both rasters."""
    config = _config(scene_dir, "data.dataset=scenes", "data.paired=false",
                     f"data.scenes.paths={{ms: {scene_dir / 'ms.tif'}, "
                     f"sar: {scene_dir / 'sar.tif'}}}",
                     f"data.scenes.labels={scene_dir / 'truth.tif'}",
                     "data.scenes.patch_size=32", "data.scenes.samples_per_epoch=24")
    dm = MSSARDataModule(config, seed=1)
    dm.setup("fit")
    windows = dm.train_datasets["sar"].windows
    assert len(windows) > 20
    with rasterio.open(scene_dir / "truth.tif") as src:
        truth = src.read(1)
        for query in windows:  # every kept window holds at most 10 % nodata
            col, row = ~src.transform * (query[0].start, query[1].stop)
            block = truth[round(row):round(row) + 32, round(col):round(col) + 32]
            assert block.shape == (32, 32) and np.mean(block == 255) <= 0.1 + 1e-9
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        out = dm.preprocess(batch, augment=True)
        assert out["image_sar"].shape == (8, 2, 32, 32) and torch.isfinite(out["image_sar"]).all()
        assert out["label_ms"].dtype == torch.long
    assert set(dm.stats) == {"ms", "sar"} and all(s > 0 for s in dm.stats["sar"].scale)

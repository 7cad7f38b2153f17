"""Mosaic training samples, region pooling and the per-pixel decoder."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset, SequentialSampler

from discomkd_geo.config import AugmentConfig, load_config
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.mosaic import (
    MosaicDataset,
    MosaicSampler,
    mosaic_layout,
    mosaic_size,
    region_offsets,
    window_shares,
)
from discomkd_geo.data.normalization import BandStats
from discomkd_geo.data.samplers import PairedDataset, UnpairedDataset
from discomkd_geo.data.transforms import MultiModalAugmentation
from discomkd_geo.models.dense import window_features
from discomkd_geo.models.discomkd import DisCoMKD
from discomkd_geo.models.layout import channels_last
from discomkd_geo.models.predictor import Predictor, PredictorInfo

PATCH = 64


class Coded(Dataset[dict[str, Any]]):
    """Patches whose pixels say where they come from: (sample index, row, col) per pixel."""

    def __init__(self, n: int, modalities: tuple[str, ...] = ("ms", "sar")) -> None:
        self.n = n
        self.modalities = modalities
        self.targets = [i % 10 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows, cols = torch.meshgrid(torch.arange(PATCH), torch.arange(PATCH), indexing="ij")
        image = torch.stack([torch.full((PATCH, PATCH), i), rows, cols]).float()
        out: dict[str, Any] = {"label": self.targets[i], "id": str(i)}
        for k, m in enumerate(self.modalities):
            out[f"image_{m}"] = image + 1000 * k  # modalities tell apart
        return out


def _check_mosaic(sample: dict[str, Any], indices: list[int], m: str, k: int,
                  targets: list[int]) -> torch.Tensor:
    """Every pixel comes from its region's patch at the same place; the mask says its class."""
    size = mosaic_size(PATCH)
    image, mask = sample[f"image_{m}"] - 1000 * k, sample[f"mask_{m}"]
    assert image.shape == (3, size, size) and mask.shape == (size, size)
    offsets = region_offsets(size, PATCH)
    region = torch.full((size, size), -1)
    for r in range(len(offsets)):
        region[(image[0] == indices[r])] = r
    assert (region >= 0).all()
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for r, (row, col) in enumerate(offsets):
        where = region == r
        assert where.sum() > 0
        assert torch.equal(image[1][where], (rows - row)[where].float())
        assert torch.equal(image[2][where], (cols - col)[where].float())
        assert (mask[where] == targets[indices[r]]).all()
    assert torch.equal(sample[f"label_{m}"], torch.as_tensor([targets[i] for i in indices]))
    return region


def test_mosaic_pixels_and_label_maps_match_paired() -> None:
    coded = Coded(40)
    mosaics = MosaicDataset(PairedDataset(coded, ["ms", "sar"]), ["ms", "sar"], PATCH,
                            paired=True)
    sampler = MosaicSampler(SequentialSampler(range(40)), torch.Generator().manual_seed(0))
    keys = list(sampler)
    assert len(keys) == len(sampler) == 10
    layouts = set()
    for indices, seed in keys:
        sample = mosaics[(indices, seed)]
        regions = [_check_mosaic(sample, indices, m, k, coded.targets)
                   for k, m in enumerate(["ms", "sar"])]
        assert torch.equal(regions[0], regions[1])  # paired: one layout
        layouts.add(regions[0].numpy().tobytes())
    assert len(layouts) == 10  # random, not a grid


def test_mosaic_unpaired_layouts_differ_per_modality() -> None:
    coded = {m: Coded(40, (m,)) for m in ("ms", "sar")}
    mosaics = MosaicDataset(UnpairedDataset(coded), ["ms", "sar"], PATCH, paired=False)
    indices = [(0, 5), (1, 6), (2, 7), (3, 8)]
    sample = mosaics[(indices, 3)]
    region_ms = _check_mosaic(sample, [i for i, _ in indices], "ms", 0, coded["ms"].targets)
    region_sar = _check_mosaic(sample, [j for _, j in indices], "sar", 0,
                               coded["sar"].targets)
    assert not torch.equal(region_ms, region_sar)


def test_mosaic_layout_boundaries_are_not_on_a_grid() -> None:
    generator = torch.Generator().manual_seed(1)
    size = mosaic_size(PATCH)
    columns = set()
    for _ in range(20):
        layout = mosaic_layout(size, PATCH, generator)
        for r, (row, col) in enumerate(region_offsets(size, PATCH)):
            inside = torch.zeros_like(layout, dtype=torch.bool)
            inside[row:row + PATCH, col:col + PATCH] = True
            assert not ((layout == r) & ~inside).any()
        right = (layout % 2 == 1).int()
        columns.update(right.argmax(dim=1).tolist())  # first right-hand column per row
    assert len(columns) > 10


def test_window_shares_are_the_windows_class_shares() -> None:
    mask = torch.zeros(1, 96, 96, dtype=torch.long)
    mask[:, :, 40:] = 3
    shares = window_shares(mask, 5, 64, 32)
    assert shares.shape == (4, 5)
    assert torch.allclose(shares[0], torch.tensor([40 / 64, 0, 0, 24 / 64, 0]))
    assert torch.allclose(shares[1], torch.tensor([8 / 64, 0, 0, 56 / 64, 0]))
    assert torch.allclose(shares.sum(1), torch.ones(4))


def test_region_pooling_equals_dense_window_pooling() -> None:
    torch.manual_seed(0)
    model = DisCoMKD({"ms": 3, "sar": 2}, 10, backbone="small_cnn", width=4,
                     decoder=True).eval()
    # Channels-last, as training steps and the engine feed CPU convolutions.
    x = channels_last(torch.randn(2, 2, 96, 96))
    with torch.no_grad():
        out = model({"sar": x}, regions=(64, 32)).modalities["sar"]
        branch = model.branch("sar")
        dense = [window_features(e, x, 64, 32, 0) for e in branch.encoders()]
        logits = branch.pooled_logits([f.reshape(8, -1) for f in dense])
        z_inv, z_inf, _ = branch.split(*[f.reshape(8, -1) for f in dense])
        # The engine's dense mode on the same image (identity normalisation).
        stats = BandStats("meanstd", ["VV", "VH"], [0.0, 0.0], [1.0, 1.0])
        info = PredictorInfo("sar", ["VV", "VH"], [str(i) for i in range(10)],
                             [(0, 0, 0)] * 10, 64, units="dB")
        engine = Predictor(branch, stats, info).dense(x, 32, 0)
    assert torch.equal(out.logits, logits)
    assert torch.equal(out.z_inv, z_inv) and torch.equal(out.z_inf, z_inf)
    assert torch.equal(torch.softmax(out.logits, 1).reshape(2, 2, 2, 10), engine)
    assert out.pixel_logits is not None and out.pixel_logits.shape == (2, 10, 96, 96)


def test_mask_moves_with_its_image_under_augmentation() -> None:
    torch.manual_seed(0)
    mask = torch.randint(0, 10, (16, 96, 96))
    image = torch.cat([mask[:, None].float(), torch.randn(16, 1, 96, 96)], dim=1)
    augment = MultiModalAugmentation({"sar": "dB", "ms": "dn"},
                                     AugmentConfig(intensity=False, p=0.5))
    batch = {"image_sar": image, "mask_sar": mask, "image_ms": image.clone(),
             "mask_ms": mask.clone()}
    for paired in (True, False):
        out = augment(batch, paired=paired)
        for m in ("sar", "ms"):
            assert torch.equal(out[f"image_{m}"][:, 0].long(), out[f"mask_{m}"])
        assert not torch.equal(out["mask_sar"], mask)  # something moved


@pytest.mark.slow
@pytest.mark.parametrize("paired", [True, False])
def test_datamodule_draws_mosaics(eurosat_root: Path, paired: bool) -> None:
    config = load_config(None, (f"data.root={eurosat_root}", "data.num_workers=0",
                                "data.batch_size=16", "data.mosaic=true",
                                f"data.paired={str(paired).lower()}"))
    dm = MSSARDataModule(config.data, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for m in ("ms", "sar"):
        assert batch[f"image_{m}"].shape[0] == 4 and batch[f"image_{m}"].shape[-1] == 96
        assert batch[f"mask_{m}"].shape == (4, 96, 96)
        for b in range(4):
            assert set(batch[f"mask_{m}"][b].unique().tolist()) <= set(
                batch[f"label_{m}"][b].tolist())
    if paired:
        assert torch.equal(batch["mask_ms"], batch["mask_sar"])


def _tiny_config(root: Path, *extra: str):
    return load_config(None, ("model.backbone=small_cnn", "model.width=4", "data.batch_size=16",
                              "data.num_workers=0", "trainer.max_epochs=1",
                              "trainer.accelerator=cpu", f"data.root={root}", *extra))


@pytest.mark.slow
def test_training_on_mosaics_gives_branches_a_decoder(eurosat_root: Path, scene_dir: Path,
                                                      tmp_path: Path) -> None:
    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings
    from discomkd_geo.models.predictor import load_torch_predictor
    from discomkd_geo.training.train import train

    result = train(_tiny_config(eurosat_root, "data.mosaic=true", "model.decoder=true"),
                   tmp_path / "run", progress=False)
    assert set(result.metrics) == {"ms", "sar"}  # scored on isolated test patches
    log = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/pixel" in log and "train/adv" in log
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):  # no trust needed
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert any(".decoder." in k for k in state), ckpt.name
    predictor = load_torch_predictor(tmp_path / "run", "sar")
    assert predictor.has_decoder
    summary = predict_to_file(predictor, scene_dir / "sar.tif", tmp_path / "map.tif",
                              MapSettings.of(mode="auto"))
    assert summary.mode == "pixel" and summary.mapped_pixels > 0


@pytest.mark.slow
def test_decoder_needs_mosaics(eurosat_root: Path, tmp_path: Path) -> None:
    from discomkd_geo.errors import ConfigError
    from discomkd_geo.training.train import train

    with pytest.raises(ConfigError, match="data.mosaic"):
        train(_tiny_config(eurosat_root, "model.decoder=true"), tmp_path / "run",
              progress=False)
    with pytest.raises(ConfigError, match="set one of the two"):
        train(_tiny_config(eurosat_root, "data.mosaic=true", "model.decoder=true",
                           "model.decoder_epochs=1"), tmp_path / "run2", progress=False)


@pytest.mark.slow
def test_fit_decoders_trains_only_the_decoder(eurosat_root: Path, scene_dir: Path,
                                              tmp_path: Path) -> None:
    """Two-stage: a run trained on isolated patches, then a decoder alone on mosaics
    (model.decoder_epochs), saved in the run, which then loads and maps per pixel."""
    from click.testing import CliRunner

    from discomkd_geo.cli import main
    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings
    from discomkd_geo.models.predictor import load_torch_predictor
    from discomkd_geo.training.train import train

    run = tmp_path / "run"
    train(_tiny_config(eurosat_root, "model.decoder_epochs=1"), run, progress=False)
    assert sorted(p.name for p in (run / "decoders").iterdir()) == ["ms.pt", "sar.pt"]
    before = load_torch_predictor(run / "checkpoints" / "best-sar.ckpt", "sar")
    after = load_torch_predictor(run, "sar")  # the run directory now loads its decoder
    assert not before.has_decoder and after.has_decoder
    frozen = {k: v for k, v in after.branch.state_dict().items() if not k.startswith("decoder.")}
    assert frozen.keys() == before.branch.state_dict().keys()
    assert all(torch.equal(v, before.branch.state_dict()[k]) for k, v in frozen.items())
    assert after.branch.decoder.residual[-1].weight.abs().sum() > 0  # it learned
    x = torch.rand(3, 2, 64, 64)
    torch.testing.assert_close(after(x), before(x))  # patch predictions unchanged
    summary = predict_to_file(after, scene_dir / "sar.tif", tmp_path / "map.tif",
                              MapSettings())
    assert summary.mode == "pixel" and summary.mapped_pixels > 0  # the default: auto
    # The command refits a run's decoder only when told to overwrite it.
    decoder = (run / "decoders" / "sar.pt").read_bytes()
    refused = CliRunner().invoke(main, ["fit-decoder", "--run", str(run), "--modality", "sar",
                                        "--epochs", "1"])
    assert refused.exit_code == 1 and "already exists" in refused.output
    assert (run / "decoders" / "sar.pt").read_bytes() == decoder
    done = CliRunner().invoke(main, ["fit-decoder", "--run", str(run), "--modality", "sar",
                                     "--epochs", "1", "--overwrite"])
    assert done.exit_code == 0, done.output
    assert "sar branch with a per-pixel decoder" in done.output


def test_decoder_modalities_picks_branches_and_refuses_unknown_ones() -> None:
    from discomkd_geo.config import ModelConfig
    from discomkd_geo.errors import ConfigError
    from discomkd_geo.training.decoder_fit import decoder_modalities

    both = ["ms", "sar"]
    assert decoder_modalities(ModelConfig(), both, both) == both
    assert decoder_modalities(ModelConfig(decoder_modalities=["sar"]), both, both) == ["sar"]
    # A late-fusion teacher has no single-modality branch: no decoder, no error (compare
    # trains one with the students' config).
    assert decoder_modalities(ModelConfig(decoder_modalities=["sar"]), both, []) == []
    with pytest.raises(ConfigError, match="no radar modality in this run"):
        decoder_modalities(ModelConfig(decoder_modalities=["radar"]), both, both)

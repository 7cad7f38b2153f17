"""Model layer: GRL, encoders, weight loading, DisCoM-KD network, branches and predictors."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from discomkd_geo.data.normalization import BandStats
from discomkd_geo.errors import CheckpointError, ConfigError
from discomkd_geo.models import (
    DisCoMKD,
    DisCoMKDLoss,
    GradientReversal,
    Predictor,
    PredictorInfo,
    build_branch,
    dann_lambda,
    gradient_reversal,
    load_predictor,
)
from discomkd_geo.models.backbones import build_backbone, load_backbone_weights
from discomkd_geo.models.baselines import MonoModal
from discomkd_geo.models.branches import BranchedModel

SMALL = {"backbone": "small_cnn", "width": 8}


def _images(channels: dict[str, int], sizes: dict[str, int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(sizes[m], c, 32, 32, generator=g) for m, c in channels.items()}


# -- gradient reversal ----------------------------------------------------------------
@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0])
def test_gradient_reversal_reverses_and_scales(lam: float) -> None:
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = gradient_reversal(x, lam)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)


def test_gradient_reversal_module_lambda_is_settable() -> None:
    grl = GradientReversal()
    grl.lambda_ = 2.0
    x = torch.ones(2, 3, requires_grad=True)
    grl(x).sum().backward()
    assert torch.equal(x.grad, torch.full((2, 3), -2.0))
    x.grad = None
    grl(x, lambda_=0.25).sum().backward()  # per-call override
    assert torch.equal(x.grad, torch.full((2, 3), -0.25))


def test_dann_lambda_ramp() -> None:
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(1.0, max_lambda=0.5) == pytest.approx(0.5 * (2 / (1 + math.exp(-10)) - 1))
    assert dann_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    assert dann_lambda(2.0) == dann_lambda(1.0) and dann_lambda(-1.0) == 0.0  # clipped
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)


# -- encoders ---------------------------------------------------------------------------
@pytest.mark.parametrize("bands", [1, 2, 4, 13])
def test_small_cnn_shapes(bands: int) -> None:
    net = build_backbone("small_cnn", bands, width=8)
    assert net.out_features == 64
    assert net(torch.randn(2, bands, 32, 32)).shape == (2, 64)


@pytest.mark.slow
@pytest.mark.parametrize("bands", [13, 2])
def test_resnet18_shapes(bands: int) -> None:
    net = build_backbone("resnet18", bands)
    assert net.conv1.in_channels == bands
    assert net.out_features == 512
    assert net(torch.randn(2, bands, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("bands", [13, 2])
def test_resnet18_stem_starts_at_the_default_scale_of_its_band_count(bands: int) -> None:
    """The authors' stem: PyTorch's default init, std 1 / sqrt(3 * fan_in) (0.058 for 2 SAR
    bands, 0.023 for 13 MS ones), not torchvision's fan_out init (0.025 whatever the bands),
    under which the SAR branch took off epochs later (benchmarks/fidelity/)."""
    torch.manual_seed(0)
    std = build_backbone("resnet18", bands).conv1.weight.std().item()
    assert std == pytest.approx((3 * bands * 49) ** -0.5, rel=0.05)


def test_unknown_backbone_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.backbone.*vit"):
        build_backbone("vit", 3)


def test_load_backbone_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = build_backbone("small_cnn", 4, width=8).eval()
    path = tmp_path / "enc.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)  # DDP prefix
    dst = build_backbone("small_cnn", 4, width=8).eval()
    x = torch.randn(2, 4, 32, 32)
    assert not torch.equal(dst(x), src(x))
    load_backbone_weights(dst, path)
    assert torch.equal(dst(x), src(x))


def test_load_resnet_weights_with_classifier_head(tmp_path: Path) -> None:
    """A torchvision-style file (with its fc head) initialises our encoder."""
    from torchvision.models import resnet18

    full = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    enc = build_backbone("resnet18", 3)
    load_backbone_weights(enc, path)
    assert torch.equal(enc.layer4[1].conv2.weight, full.layer4[1].conv2.weight)


def test_load_backbone_weights_adapts_first_conv(tmp_path: Path) -> None:
    """RGB weights into a 13-band encoder: same response to a band-constant image."""
    torch.manual_seed(0)
    rgb = build_backbone("small_cnn", 3, width=8).eval()
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    ms = build_backbone("small_cnn", 13, width=8).eval()
    load_backbone_weights(ms, path)
    w3 = rgb.stage1[0].weight
    w13 = ms.stage1[0].weight
    assert w13.shape[1] == 13
    assert torch.allclose(w13[:, 5], w3.mean(dim=1) * 3 / 13)
    plane = torch.rand(2, 1, 32, 32)
    assert torch.allclose(ms(plane.expand(2, 13, 32, 32)), rgb(plane.expand(2, 3, 32, 32)),
                          atol=1e-5)


def test_load_backbone_weights_mismatch_errors(tmp_path: Path) -> None:
    wide = tmp_path / "wide.pt"
    torch.save(build_backbone("small_cnn", 4, width=16).state_dict(), wide)
    with pytest.raises(CheckpointError, match=r"wide\.pt.*shape") as err:
        load_backbone_weights(build_backbone("small_cnn", 4, width=8), wide)
    assert "\n" not in str(err.value)
    other = tmp_path / "resnet.pt"
    torch.save(build_backbone("resnet18", 4).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"resnet\.pt.*missing keys"):
        load_backbone_weights(build_backbone("small_cnn", 4, width=8), other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: cannot read weights"):
        load_backbone_weights(build_backbone("small_cnn", 4, width=8), junk)


def test_model_weights_initialise_every_encoder(tmp_path: Path) -> None:
    enc = build_backbone("small_cnn", 3, width=8)
    path = tmp_path / "w.pt"
    torch.save(enc.state_dict(), path)
    model = DisCoMKD({"a": 3, "b": 3}, 5, weights=str(path), **SMALL)
    for m in ("a", "b"):
        for e in model.branch(m).encoders():
            assert torch.equal(e.stage2[0].weight, enc.stage2[0].weight)
    assert "weights" not in model.branch_spec("a")  # a saved branch carries its weights


# -- DisCoM-KD network ------------------------------------------------------------------
def test_three_modalities_with_different_batch_sizes() -> None:
    channels = {"ms": 13, "sar": 2, "dem": 1}
    sizes = {"ms": 4, "sar": 3, "dem": 5}
    model = DisCoMKD(channels, 7, **SMALL)
    out = model(_images(channels, sizes), grl_lambda=0.5)
    assert list(out.modalities) == ["ms", "sar", "dem"] and out.num_modalities == 3
    for i, (m, o) in enumerate(out.modalities.items()):
        b = sizes[m]
        assert o.index == i
        assert o.logits.shape == o.aux_inv_logits.shape == o.aux_inf_logits.shape == (b, 7)
        assert o.adv_logits.shape == o.mod_inf_logits.shape == o.mod_irr_logits.shape == (b, 3)
        assert o.z_inv.shape == o.z_inf.shape == o.z_irr.shape == (b, 32)
    labels = {m: torch.randint(0, 7, (b,)) for m, b in sizes.items()}
    losses = DisCoMKDLoss()(out, labels)
    losses["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_modality_subset_and_errors() -> None:
    model = DisCoMKD({"a": 2, "b": 3, "c": 4}, 5, **SMALL).eval()
    out = model(_images({"c": 4}, {"c": 2}))
    assert list(out.modalities) == ["c"] and out.modalities["c"].index == 2
    with pytest.raises(KeyError, match="zz"):
        model(_images({"a": 2, "zz": 2}, {"a": 2, "zz": 2}))
    with pytest.raises(ConfigError, match="at least two modalities"):
        DisCoMKD({"a": 2}, 5, **SMALL)


def test_task_classifier_reads_z_inv_and_z_inf_only() -> None:
    model = DisCoMKD({"a": 2, "b": 3}, 5, **SMALL).eval()
    x = _images({"a": 2}, {"a": 3})
    o = model(x).modalities["a"]
    branch = model.branch("a")
    assert torch.equal(branch(x["a"]), o.logits)
    expected = branch.task_cls(torch.cat([o.z_inv, o.z_inf], 1))
    assert torch.allclose(o.logits, expected)


def test_discriminator_gradient_is_reversed_into_the_invariant_encoder() -> None:
    torch.manual_seed(0)
    model = DisCoMKD({"a": 2, "b": 3}, 5, **SMALL)
    images = _images({"a": 2, "b": 3}, {"a": 4, "b": 4})

    def grads(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model(images, grl_lambda=lam)
        DisCoMKDLoss(cl=0, mod=0, aux=0, perp=0)(out, {m: torch.zeros(4, dtype=torch.long)
                                                     for m in images})["loss"].backward()
        return (model.branch("a").enc_inv.stage1[0].weight.grad.clone(),
                model.discriminator.weight.grad.clone())

    plain_enc, plain_disc = grads(-1.0)  # lambda = -1: ordinary gradient
    rev_enc, rev_disc = grads(2.0)
    assert torch.allclose(rev_enc, -2.0 * plain_enc, atol=1e-6)
    assert plain_enc.abs().sum() > 0
    assert torch.allclose(rev_disc, plain_disc)  # the discriminator itself is not reversed
    zero_enc, _ = grads(0.0)
    assert zero_enc.abs().sum() == 0  # the specific encoder gets nothing from L_adv either
    assert model.branch("a").enc_spec.stage1[0].weight.grad.abs().sum() == 0


@pytest.mark.slow
def test_adam_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    channels = {"ms": 4, "sar": 2}
    model = DisCoMKD(channels, 3, **SMALL)
    images = _images(channels, {"ms": 12, "sar": 12})
    labels = {m: torch.arange(12) % 3 for m in channels}
    # Make the task learnable: the class shifts the image mean.
    images = {m: x + labels[m].view(-1, 1, 1, 1).float() for m, x in images.items()}
    criterion = DisCoMKDLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(10):
        opt.zero_grad()
        losses = criterion(model(images), labels)
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert history[-1]["cl"] < 0.5 * history[0]["cl"]


# -- branches and predictors -------------------------------------------------------------
@pytest.mark.parametrize("m", ["ms", "sar"])
def test_branch_spec_rebuilds_the_branch(m: str) -> None:
    model = DisCoMKD({"ms": 13, "sar": 2}, 10, **SMALL)
    model(_images({"ms": 13, "sar": 2}, {"ms": 4, "sar": 4}))  # move BN running stats
    model.eval()
    spec = model.branch_spec(m)
    assert spec["kind"] == "discomkd"
    rebuilt = build_branch(**spec)
    rebuilt.load_state_dict(model.branch(m).state_dict())
    rebuilt.eval()
    x = torch.randn(3, spec["in_channels"], 32, 32)
    assert torch.equal(rebuilt(x), model.branch(m)(x))


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_reflect_padding_is_in_the_spec_and_rebuilt(backbone: str) -> None:
    model = MonoModal({"sar": 2}, 4, backbone=backbone, width=4, padding="reflect")
    spec = model.branch_spec("sar")
    assert spec["padding"] == "reflect"
    convs = [c for c in build_branch(**spec).modules() if isinstance(c, nn.Conv2d)]
    assert {c.padding_mode for c in convs if any(c.padding)} == {"reflect"}
    # A uniform image stays uniform under reflection, not under zero padding: the edge
    # cells of a patch then look like the inside of a uniform region.
    x = torch.ones(1, 2, 64, 64)
    encoder = model.branch("sar").encoder.eval()
    fmap = encoder.stages()[0][0](x)
    assert torch.allclose(fmap[..., 0, 0], fmap[..., 5, 5])
    # Branches without the option keep the spec they had before it existed.
    assert "padding" not in MonoModal({"sar": 2}, 4, **SMALL).branch_spec("sar")
    with pytest.raises(ConfigError, match="unknown padding 'circular'"):
        build_backbone(backbone, 2, padding="circular")


def test_mono_branch_and_unknown_kind() -> None:
    branch = build_branch("mono", in_channels=2, num_classes=4, **SMALL)
    assert branch(torch.randn(2, 2, 32, 32)).shape == (2, 4)
    with pytest.raises(CheckpointError, match="unknown branch kind 'teacher'"):
        build_branch("teacher", in_channels=2, num_classes=4)


def test_branched_model_base() -> None:
    class TwoMono(BranchedModel):
        def __init__(self) -> None:
            super().__init__()
            for m, c in {"x": 3, "y": 1}.items():
                self.add_branch(m, "mono", in_channels=c, num_classes=2, **SMALL)

    model = TwoMono()
    assert model.modalities == ["x", "y"]
    assert model.branch_spec("y") == {"kind": "mono", "in_channels": 1, "num_classes": 2,
                                      **SMALL}
    assert isinstance(model.branch("x"), nn.Module)
    assert any(k.startswith("branches.y.") for k in model.state_dict())
    with pytest.raises(KeyError, match="no 'z' branch"):
        model.branch_spec("z")


def _predictor(kind: str = "discomkd") -> Predictor:
    torch.manual_seed(0)
    bands = ["VV", "VH"]
    if kind == "discomkd":
        model = DisCoMKD({"ms": 13, "sar": 2}, 10, **SMALL)
        model(_images({"ms": 13, "sar": 2}, {"ms": 4, "sar": 4}))
        branch, spec = model.branch("sar"), model.branch_spec("sar")
    else:
        spec = {"kind": "mono", "in_channels": 2, "num_classes": 10, **SMALL}
        branch = build_branch(**spec)
    stats = BandStats("percentile", bands, [-25.0, -30.0], [25.0, 20.0])
    info = PredictorInfo(modality="sar", bands=bands, classes=[f"c{i}" for i in range(10)],
                         colors=[(i, i, i) for i in range(10)], patch_size=32,
                         pixel_size=10.0, units="dB", method=kind, branch_spec=spec)
    return Predictor(branch, stats, info).eval()


@pytest.mark.parametrize("kind", ["discomkd", "mono"])
def test_predictor_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    predictor = _predictor(kind)
    path = tmp_path / "sar.pt"
    predictor.save(path)
    raw = torch.rand(5, 2, 32, 32) * -25
    with torch.no_grad():
        expected = predictor(raw)
        for loaded in (Predictor.load(path), load_predictor(path, "sar"), load_predictor(path)):
            probs = loaded(raw)
            assert torch.equal(probs, expected)
            assert loaded.info == predictor.info
    assert torch.allclose(expected.sum(1), torch.ones(5))


@pytest.mark.parametrize("content", [b"\x00\xff junk" * 40, b"hello, not a checkpoint", b""])
def test_junk_files_raise_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.ckpt"
    path.write_bytes(content)
    for load in (load_predictor, Predictor.load):
        with pytest.raises(CheckpointError, match=r"junk\.ckpt: cannot read") as err:
            load(path)
        assert "\n" not in str(err.value)

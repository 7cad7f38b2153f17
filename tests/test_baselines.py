"""Baselines (mono, teacher, KD, DKD), KD losses, ablations and the comparison report."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from discomkd_geo import load_predictor
from discomkd_geo.cli import main
from discomkd_geo.config import load_config
from discomkd_geo.constants import EUROSAT_CLASSES
from discomkd_geo.data.normalization import Normalize
from discomkd_geo.errors import CheckpointError, ConfigError
from discomkd_geo.inference.scoring import score_map
from discomkd_geo.models.discomkd import DisCoMKD
from discomkd_geo.models.kd import dkd_loss, kd_loss
from discomkd_geo.models.layout import channels_last
from discomkd_geo.models.losses import DisCoMKDLoss
from discomkd_geo.training.baselines import KDTask
from discomkd_geo.training.compare import VARIANTS, _variant_config, compare
from discomkd_geo.training.module import DisCoMKDTask
from discomkd_geo.training.train import TASKS, train

TINY = (
    "model.backbone=small_cnn",
    "model.width=8",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "optim.lr=0.003",
)


# --------------------------------------------------------------------------- KD losses
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) of probability rows."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    t = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    return s, t, torch.tensor([0, 3, 1, 1, 2])


def test_kd_loss_matches_hand_computed(logits: tuple) -> None:
    s, t, _ = logits
    T = 4.0
    p_s = np.exp(_log_softmax(s.numpy() / T))
    p_t = np.exp(_log_softmax(t.numpy() / T))
    expected = T**2 * _kl(p_t, p_s).mean()
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-10)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-12)


def test_dkd_loss_matches_hand_computed(logits: tuple) -> None:
    """TCKD/NCKD as Zhao et al. define them, computed naively in numpy."""
    s, t, y = logits
    T, alpha, beta = 4.0, 1.5, 8.0
    p_s = np.exp(_log_softmax(s.numpy() / T))
    p_t = np.exp(_log_softmax(t.numpy() / T))
    rows = np.arange(len(y))
    yn = y.numpy()
    b_s = np.stack([p_s[rows, yn], 1 - p_s[rows, yn]], axis=1)
    b_t = np.stack([p_t[rows, yn], 1 - p_t[rows, yn]], axis=1)
    tckd = _kl(b_t, b_s).mean()
    nckd = []
    for i, c in enumerate(yn):  # softmax over the non-target classes only
        others = [k for k in range(s.shape[1]) if k != c]
        q_s = p_s[i, others] / p_s[i, others].sum()
        q_t = p_t[i, others] / p_t[i, others].sum()
        nckd.append(_kl(q_t[None], q_s[None])[0])
    expected = T**2 * (alpha * tckd + beta * np.mean(nckd))
    got = dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=T).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_dkd_decomposes_kd(logits: tuple) -> None:
    """Zhao et al.'s identity: KD = TCKD + (1 - p_t[target]) * NCKD, per sample."""
    s, t, y = logits
    T = 2.0
    for i in range(len(y)):
        si, ti, yi = s[i:i + 1], t[i:i + 1], y[i:i + 1]
        tckd = dkd_loss(si, ti, yi, alpha=1.0, beta=0.0, temperature=T)
        nckd = dkd_loss(si, ti, yi, alpha=0.0, beta=1.0, temperature=T)
        pt = torch.softmax(ti / T, dim=1)[0, yi[0]]
        assert kd_loss(si, ti, T).item() == pytest.approx((tckd + (1 - pt) * nckd).item(),
                                                          rel=1e-9)


@pytest.mark.parametrize("loss", ["kd", "dkd"])
def test_distillation_gradients_reach_the_student_only(logits: tuple, loss: str) -> None:
    s, t, y = (v.clone() for v in logits)
    s = (s * 100).requires_grad_()  # large logits: must stay finite
    t.requires_grad_()
    value = kd_loss(s, t, 4.0) if loss == "kd" else dkd_loss(s, t, y, 1.0, 8.0, 4.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    assert s.grad.abs().sum() > 0
    assert t.grad is None


# --------------------------------------------------------------------------- ablations
@pytest.mark.parametrize(("term", "exclusive"), [
    ("adv", ["discriminator"]),
    ("mod", ["mod_cls_inf", "mod_cls_irr"]),
    ("aux", ["aux_cls"]),
    ("perp", []),
])
def test_zero_weight_removes_the_term(term: str, exclusive: list[str]) -> None:
    """A zero weight gives the loss and gradients of the objective without that term."""
    torch.manual_seed(0)
    model = DisCoMKD({"ms": 13, "sar": 2}, 10, backbone="small_cnn", width=8)
    images = {"ms": torch.randn(4, 13, 16, 16), "sar": torch.randn(4, 2, 16, 16)}
    labels = {m: torch.randint(0, 10, (4,)) for m in images}

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                for n, p in model.named_parameters()}

    ablated = DisCoMKDLoss(**{term: 0.0})(model(images), labels)
    without = grads(ablated["loss"])
    terms = DisCoMKDLoss()(model(images), labels)
    assert terms[term].item() != 0.0  # the term exists and would contribute
    by_hand = sum(terms[t] for t in ("cl", "adv", "mod", "aux", "perp") if t != term)
    assert ablated["loss"].item() == pytest.approx(by_hand.item(), rel=1e-6)
    reference = grads(by_hand)
    for name, g in without.items():
        assert torch.allclose(g, reference[name], atol=1e-7), name
        if name.split(".")[0] in exclusive:  # the term's own heads learn nothing
            assert not g.any(), name


def test_ablation_variants_reach_the_criterion(tmp_path: Path) -> None:
    info = {"modalities": {"ms": ["B01"] * 13, "sar": ["VV", "VH"]}, "classes": list("abc")}
    expected = {"discomkd-no-adv": ("adv", 0.0), "discomkd-no-perp": ("perp", 0.0),
                "discomkd-no-aux": ("aux", 0.0), "discomkd-no-mod": ("mod", 0.0)}
    seen = set()
    base = load_config(None, TINY)
    for variant in VARIANTS:
        if not variant.name.startswith("discomkd-"):
            continue
        config = _variant_config(base, variant, seed=3, teacher=None)
        assert (config.seed, config.data.split_seed, config.method) == (3, 3, "discomkd")
        task = DisCoMKDTask(config.to_dict(), info)
        task.setup("fit")
        if variant.name in expected:
            key, weight = expected[variant.name]
            assert task.criterion.weights[key] == weight
            assert sum(w == 0 for w in task.criterion.weights.values()) == 1
        elif variant.name == "discomkd-dann":
            assert config.loss.grl_schedule == "dann" and task.criterion.orthogonality == "squared"
        else:
            assert variant.name == "discomkd-signed"
            assert task.criterion.orthogonality == "signed"
        seen.add(variant.name)
    assert seen == {*expected, "discomkd-dann", "discomkd-signed"}


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def comparison(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A real comparison: mono and kd (which brings in its teacher), one seed."""
    config = load_config(None, (*TINY, f"data.root={eurosat_root}"))
    out = tmp_path_factory.mktemp("compare") / "report"
    lines: list[str] = []
    results = compare(config, out, seeds=1, methods=["mono", "kd"], lrs=(3e-3,), patience=1,
                      command="discomkd-geo x", echo=lines.append)
    return out, results.to_json(), lines


@pytest.fixture(scope="module")
def dkd_run(comparison: tuple, eurosat_root: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, _, _ = comparison
    teacher = out / "runs" / "teacher" / "lr0.003" / "seed0"
    config = load_config(None, (*TINY, f"data.root={eurosat_root}", "method=dkd",
                                "data.paired=true", f"model.teacher={teacher}"))
    run = tmp_path_factory.mktemp("dkd") / "run"
    train(config, run, progress=False)
    return run


@pytest.mark.slow
def test_report_is_built_from_the_runs(comparison: tuple) -> None:
    out, results, lines = comparison
    assert [r["variant"] for r in results["runs"]] == ["mono", "teacher", "kd"]
    assert json.loads((out / "results.json").read_text()) == results
    assert len(lines) == 3 and lines[0].startswith("[1] mono lr 0.003 seed 0: test weighted F1 ms ")
    assert results["chosen_lr"] == {"mono": {"ms": 3e-3, "sar": 3e-3}, "teacher": {"fused": 3e-3},
                                    "kd": {"ms": 3e-3, "sar": 3e-3}}
    report = (out / "report.md").read_text()
    assert "discomkd-geo x" in report
    rows = {line.split("|")[1].strip(): line for line in report.split("## ")[1].splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert set(rows) == {"mono", "teacher", "kd"}
    for run in results["runs"]:
        metrics = json.loads((out / run["run_dir"] / "metrics.json").read_text())
        assert metrics["method"] == run["method"] and metrics["test"] == run["test"]
        assert run["epochs"] == 1 and run["wall"] >= run["seconds"] > 0
        assert run["val_best"] == {h: max(c) for h, c in run["val_curve"].items()}
        cells = [c.strip() for c in rows[run["variant"]].split("|")[2:-1]]
        for head, cell in zip(["ms", "sar", "fused"], cells[:3], strict=True):
            if head in run["test"]:
                assert cell == f"{100 * run['test'][head]['f1_weighted']:.1f}"
            else:
                assert cell == "-"
        assert cells[6] == f"{run['parameters']:,}"
    assert rows["kd"].count("+ teacher") == 1
    assert "minus each other method" not in report  # no DisCoM-KD row to compare with
    assert (out / "f1.png").stat().st_size > 5000
    assert (out / "val_curves.png").stat().st_size > 5000
    assert not (out / "diagnostics.png").exists()


@pytest.mark.slow
def test_report_regenerates_from_results_json(comparison: tuple, tmp_path: Path) -> None:
    out, _, _ = comparison
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((out / "results.json").read_text())
    result = CliRunner().invoke(main, ["compare", "--out", str(copy), "--regenerate"])
    assert result.exit_code == 0, result.output
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert json.loads((copy / "results.json").read_text()) == json.loads(
        (out / "results.json").read_text())
    assert {p.name for p in copy.iterdir()} == {"results.json", "report.md", "f1.png",
                                               "val_curves.png"}
    missing = CliRunner().invoke(main, ["compare", "--out", str(tmp_path), "--regenerate"])
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert "results.json: cannot read the comparison results" in missing.output


def quick_maps(scenes: int) -> list[str]:
    """``compare --quick`` options scoring SAR maps of ``scenes`` held-out scenes."""
    return ["--quick", "--map-scenes", str(scenes), "--map-size", "128", "--set",
            "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def quick(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one ``compare --quick --map-scenes 2`` run (two tests share it)."""
    out = tmp_path_factory.mktemp("quick") / "quick"
    result = CliRunner().invoke(main, ["compare", "--data-root", str(eurosat_root),
                                       "--out", str(out), *quick_maps(2)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_quick_protocol_end_to_end(quick: Path) -> None:
    """``compare --quick``: lr grid on seed 0's validation, paired seeds, diagnostics."""
    out = quick
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["lrs"] == [1e-3, 3e-3]
    assert results["patience"] == 1 and results["config"]["trainer"]["max_epochs"] == 2
    tuned = [(r["variant"], r["lr"]) for r in results["runs"] if r["seed"] == 0]
    assert sorted(tuned) == [(v, lr) for v in ("discomkd", "mono") for lr in (1e-3, 3e-3)]
    for variant, heads in results["chosen_lr"].items():
        for head, lr in heads.items():
            scores = results["tuning"][variant][head]
            assert scores[f"lr{lr:g}"] == max(scores.values())
            assert any(r["variant"] == variant and r["seed"] == 1 and r["lr"] == lr
                       for r in results["runs"])
    for run in results["runs"]:
        assert 1 <= run["epochs"] <= 2
        assert all(len(c) == run["epochs"] for c in run["val_curve"].values())
        if run["variant"] == "discomkd":
            diag = run["diagnostics"]
            assert all(len(v) == run["epochs"] for v in diag.values())
            assert all(0 <= a <= 1 for a in diag["diag/disc_acc"])
            assert all(g > 0 for g in diag["diag/grl_ratio"] + diag["diag/z_inv_norm"])
        else:
            assert run["diagnostics"] == {}
    diffs = results["summary"]["differences"]["mono"]
    for head in ("ms", "sar"):
        ours = results["summary"]["methods"]["discomkd"]["f1_weighted"][head]["values"]
        theirs = results["summary"]["methods"]["mono"]["f1_weighted"][head]["values"]
        assert diffs[head]["n"] == 2
        assert diffs[head]["mean"] == pytest.approx(np.mean(ours) - np.mean(theirs))
    report = (out / "report.md").read_text()
    assert "## discomkd minus each other method" in report and "| mono | " in report
    assert (out / "diagnostics.png").stat().st_size > 5000


@pytest.mark.slow
def test_quick_protocol_scores_sar_maps_of_held_out_scenes(quick: Path, eurosat_root: Path,
                                                           tmp_path: Path) -> None:
    """``compare --quick --map-scenes 2``: map OA / edge OA per run, summary, report."""
    out = quick
    results = json.loads((out / "results.json").read_text())
    assert results["map_score"] == {"scenes": 2, "mode": "auto", "stride": 32, "size": 128}
    scenes = [out / "scenes" / f"scene{seed}" for seed in (101, 102)]
    assert len(results["runs"]) == 6  # 2 methods x 2 lrs on seed 0, each chosen on seed 1
    for run in results["runs"]:
        assert "map_oa" not in run["test"]["ms"]  # SAR-only maps
        recorded = json.loads((out / run["run_dir"] / "map_score.json").read_text())
        for scene in scenes:  # each run's map of each scene, scored against that scene
            again = score_map(out / run["run_dir"] / "maps" / f"{scene.name}.tif",
                              scene / "truth.tif", list(EUROSAT_CLASSES))
            assert recorded["scenes"][scene.name]["oa"] == again["oa"]
            assert recorded["scenes"][scene.name]["edge_oa"] == again["edge_oa"]
        for metric, key in (("map_oa", "oa"), ("map_edge_oa", "edge_oa")):
            per_scene = [recorded["scenes"][s.name][key] for s in scenes]
            assert run["test"]["sar"][metric] == pytest.approx(np.mean(per_scene))
            assert 0.0 <= run["test"]["sar"][metric] <= 1.0
    summary = results["summary"]
    ours = summary["methods"]["discomkd"]["map_oa"]["sar"]
    assert len(ours["values"]) == 2 and ours["low"] <= ours["mean"] <= ours["high"]
    theirs = summary["methods"]["mono"]["map_oa"]["sar"]["values"]
    diff = summary["differences_map_oa"]["mono"]["sar"]
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(np.mean(ours["values"])
                                                            - np.mean(theirs))
    assert set(summary["differences_map_edge_oa"]["mono"]) == {"sar"}
    report = (out / "report.md").read_text()
    assert "Map score: SAR-only maps of 2 held-out synthetic scenes (seeds 101-102, 128 px)" \
        in report
    assert "## Test SAR-only map OA (held-out scenes) (%), mean ± std [95% t interval]" in report
    assert "## discomkd minus each other method, paired by seed (SAR-only map OA within" in report
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((out / "results.json").read_text())
    assert CliRunner().invoke(main, ["compare", "--out", str(copy), "--regenerate"]).exit_code == 0
    assert (copy / "report.md").read_text() == report
    assert (out / "maps.png").stat().st_size > 5000 and (copy / "maps.png").is_file()
    other = CliRunner().invoke(main, ["compare", "--data-root", str(eurosat_root), "--out",
                                      str(out), *quick_maps(3), "--resume"])
    assert other.exit_code == 1 and "another map_score" in other.output


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mono", "kd", "dkd"])
@pytest.mark.parametrize("modality", ["ms", "sar"])
def test_students_are_loadable_predictors(comparison: tuple, dkd_run: Path, method: str,
                                          modality: str) -> None:
    out, _, _ = comparison
    run = dkd_run if method == "dkd" else out / "runs" / method / "lr0.003" / "seed0"
    predictor = load_predictor(run, modality)
    assert predictor.info.method == method
    assert predictor.info.branch_spec["kind"] == "mono"
    ckpt = run / "checkpoints" / f"best-{modality}.ckpt"
    task = TASKS[method].load_from_checkpoint(ckpt, map_location="cpu").eval()
    raw = torch.rand(3, len(predictor.info.bands), 64, 64) * (3000 if modality == "ms" else -25)
    with torch.no_grad():
        # Channels-last: the layout of training's steps and evaluation, and the predictor's.
        normalized = channels_last(Normalize(predictor.stats)(raw))
        logits = task.model.branch(modality)(normalized)  # calibrated by train:
        expected = torch.softmax(logits / predictor.info.temperature, 1)
        assert torch.equal(predictor(raw), expected)


@pytest.mark.slow
def test_teacher_is_scored_fused_and_exports_no_branch(comparison: tuple) -> None:
    out, results, _ = comparison
    run = out / "runs" / "teacher" / "lr0.003" / "seed0"
    assert set(results["runs"][1]["test"]) == {"fused"}
    assert (run / "checkpoints" / "best-fused.ckpt").is_file()
    log = next(run.rglob("metrics.csv")).read_text().splitlines()[0]
    assert "val/fused/f1_weighted" in log
    with pytest.raises(CheckpointError, match="no 'sar' branch.*it has: none"):
        load_predictor(run / "checkpoints" / "best-fused.ckpt", "sar")


@pytest.mark.slow
def test_kd_students_learn_from_a_frozen_teacher(comparison: tuple) -> None:
    out, _, _ = comparison
    teacher_run = out / "runs" / "teacher" / "lr0.003" / "seed0"
    teacher_ckpt = teacher_run / "checkpoints" / "best-fused.ckpt"
    teacher_state = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    kd_ckpt = out / "runs" / "kd" / "lr0.003" / "seed0" / "checkpoints" / "last.ckpt"
    kd_state = torch.load(kd_ckpt, weights_only=True)["state_dict"]
    for name, value in teacher_state.items():  # unchanged by the students' training
        assert torch.equal(kd_state["teacher." + name.removeprefix("model.")], value), name
    log = next((out / "runs" / "kd" / "lr0.003" / "seed0").rglob("metrics.csv")).read_text()
    assert "train/kd_sar" in log.splitlines()[0]


@pytest.mark.slow
def test_kd_configuration_errors(comparison: tuple) -> None:
    out, _, _ = comparison
    hparams = torch.load(out / "runs" / "kd" / "lr0.003" / "seed0" / "checkpoints" / "last.ckpt",
                         weights_only=True)["hyper_parameters"]
    config, info = hparams["config"], hparams["data_info"]
    with pytest.raises(ConfigError, match="model.teacher"):
        KDTask({**config, "model": {**config["model"], "teacher": None}}, info)
    with pytest.raises(ConfigError, match="data.paired"):
        KDTask({**config, "data": {**config["data"], "paired": False}}, info)
    mono = out / "runs" / "mono" / "lr0.003" / "seed0"
    with pytest.raises(CheckpointError, match="best-fused.ckpt: teacher checkpoint not found"):
        KDTask({**config, "model": {**config["model"], "teacher": str(mono)}}, info)
    wrong = str(mono / "checkpoints" / "best-sar.ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint of a 'teacher' run"):
        KDTask({**config, "model": {**config["model"], "teacher": wrong}}, info)


@pytest.mark.slow
def test_compare_cli_rejects_bad_arguments(comparison: tuple, tmp_path: Path) -> None:
    out, _, _ = comparison
    bad = CliRunner().invoke(main, ["compare", "--out", str(tmp_path / "r"),
                                    "--methods", "mono,bogus"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1
    assert "bogus" in bad.output
    exists = CliRunner().invoke(main, ["compare", "--out", str(out), "--methods", "mono"])
    assert exists.exit_code == 1 and str(out) in exists.output

"""The comparison's typed results: old results.json files load, and the report is the same."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from discomkd_geo.errors import InputFileError
from discomkd_geo.training.comparison_report import report_markdown
from discomkd_geo.training.comparison_results import (
    ComparisonResults,
    RunRecord,
    summarize,
)

PROTOCOL = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_protocol"


def test_recorded_comparison_round_trips_and_reports_identically() -> None:
    """benchmarks/compare_protocol was written before the types: same JSON, same report."""
    data = json.loads((PROTOCOL / "results.json").read_text())
    results = ComparisonResults.from_json(data)
    assert len(results.runs) == len(data["runs"]) and isinstance(results.runs[0], RunRecord)
    assert results.to_json() == data  # the summary derived again equals the stored one
    assert report_markdown(results, summarize(results)) == (PROTOCOL / "report.md").read_text()


def _with_map_scores() -> dict:
    """The recorded comparison as if its SAR heads had map scores (OA and a made-up edge OA)."""
    data = json.loads((PROTOCOL / "results.json").read_text())
    for run in data["runs"]:
        if "sar" in run["test"]:
            sar = run["test"]["sar"]
            sar["map_oa"], sar["map_edge_oa"] = sar["oa"], sar["oa"] ** 2 - 0.01 * run["seed"]
    data["map_score"] = {"scenes": 5, "mode": "windows", "stride": 32, "size": 512}
    return data


def test_map_scores_are_summarised_with_intervals_and_paired_differences() -> None:
    results = ComparisonResults.from_json(_with_map_scores())
    summary = summarize(results)
    assert "map_oa" not in summary.methods["teacher"].scores  # no SAR head: no map
    runs = results.selected_runs()
    for metric in ("map_oa", "map_edge_oa"):
        assert set(summary.methods["mono"].scores[metric]) == {"sar"}  # SAR-only maps
        mono = summary.methods["mono"].scores[metric]["sar"]
        values = [r.test["sar"][metric] for r in runs["mono"]["sar"]]
        assert mono.values == values
        half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / len(values) ** 0.5
        assert (mono.low, mono.high) == pytest.approx((np.mean(values) - half,
                                                       np.mean(values) + half))
        ours = {r.seed: r.test["sar"][metric] for r in runs["discomkd"]["sar"]}
        diff = summary.more_differences[metric]["kd"]["sar"]
        theirs = {r.seed: r.test["sar"][metric] for r in runs["kd"]["sar"]}
        deltas = [ours[s] - theirs[s] for s in results.seeds]
        assert diff["mean"] == pytest.approx(np.mean(deltas)) and diff["n"] == 5
        assert diff["p"] == pytest.approx(stats.ttest_rel(list(ours.values()),
                                                          list(theirs.values())).pvalue)
    data = results.to_json()
    assert data["map_score"]["scenes"] == 5 and "differences_map_edge_oa" in data["summary"]
    assert ComparisonResults.from_json(data).to_json() == data
    report = report_markdown(results, summary)
    mono = summary.methods["mono"].scores["map_oa"]["sar"]
    table = report.split("## Test SAR-only map OA (held-out scenes) (%), mean ± std [95% t "
                         "interval] over seeds")[1].split("##")[0]
    assert "| method | sar |" in table and "| teacher |" not in table
    assert (f"| mono | {100 * mono.mean:.1f} ± {100 * mono.std:.1f} "
            f"[{100 * mono.low:.1f}, {100 * mono.high:.1f}] |") in table
    assert "## discomkd minus each other method, paired by seed (SAR-only map OA within 3 px" \
           in report
    assert "Map score: SAR-only maps of 5 held-out synthetic scenes (seeds 101-105" in report


def test_unreadable_results_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"runs": []}')
    with pytest.raises(InputFileError, match="results.json: cannot read the comparison"):
        ComparisonResults.load(path)

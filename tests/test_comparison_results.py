"""The comparison's typed results: old results.json files load, and the report is the same."""

import json
from pathlib import Path

import pytest

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


def test_a_further_metric_is_summarised_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from discomkd_geo.training import comparison_report, comparison_results

    data = json.loads((PROTOCOL / "results.json").read_text())
    for run in data["runs"]:
        for scores in run["test"].values():
            scores["map_oa"] = scores["oa"]
    metrics = {**comparison_results.SUMMARY_METRICS, "map_oa": "map OA"}
    monkeypatch.setattr(comparison_results, "SUMMARY_METRICS", metrics)
    monkeypatch.setattr(comparison_report, "SUMMARY_METRICS", metrics)
    results = ComparisonResults.from_json(data)
    summary = summarize(results)
    mono = summary.methods["mono"].scores["map_oa"]["sar"]
    runs = results.selected_runs()["mono"]["sar"]
    assert mono.values == [r.test["sar"]["oa"] for r in runs]
    assert summary.methods["mono"].to_json()["map_oa"]["sar"]["mean"] == mono.mean
    report = report_markdown(results, summary)
    assert "## Test map OA (%), mean ± std over seeds" in report
    assert f"{100 * mono.mean:.1f} ± {100 * mono.std:.1f}" in report


def test_unreadable_results_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"runs": []}')
    with pytest.raises(InputFileError, match="results.json: cannot read the comparison"):
        ComparisonResults.load(path)

"""An assessment written out: JSON, a CSV table, a Markdown report and a plot of the areas.

After :mod:`.assess` in the chain (``discomkd-geo assess -o DIR``). The directory is
written to a temporary sibling and renamed when every file is there
(:func:`discomkd_geo.files.atomic_dir`), so a failed run leaves nothing at its path:

* ``assessment.json``: :meth:`~.assess.Assessment.to_dict`;
* ``assessment.csv``: one row per class (and zone), the JSON's per-class figures with
  each interval as ``_low``/``_high`` columns;
* ``report.md``: design, points left out and why, overall accuracy, a table per class,
  the error matrices (counts and area proportions), the figures per zone;
* ``areas.png``: mapped (pixel-counted) against error-adjusted areas with their 95 %
  intervals.
"""

import csv
import json
import os
from pathlib import Path
from typing import Any

from ..files import atomic_dir
from .assess import Assessment
from .estimators import INTERVALS

#: The per-class figures of the CSV; ``_ci95`` pairs become ``_low`` and ``_high``.
CSV_FIGURES = ("mapped_ha", "mapped_proportion", "points", "reference_points",
               "estimated_ha", "estimated_ha_se", "estimated_ha_ci95", "proportion",
               "proportion_se", "proportion_ci95", "users_accuracy", "users_accuracy_ci95",
               "producers_accuracy", "producers_accuracy_ci95")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(pair: list[float] | None, digits: int = 3) -> str:
    return "-" if pair is None else f"{pair[0]:.{digits}f}-{pair[1]:.{digits}f}"


def _ha(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def class_table(figures: dict[str, Any]) -> list[str]:
    """Markdown table lines of a region's per-class figures."""
    lines = ["| class | mapped ha | estimated ha (95% CI) | UA (95% CI) | PA (95% CI) | "
             "points |", "|---|---:|---:|---:|---:|---:|"]
    for c in figures["classes"]:
        estimated = (_ha(c.get("estimated_ha")) if c.get("estimated_ha_ci95") is None else
                     f"{_ha(c['estimated_ha'])} ({_ha(c['estimated_ha_ci95'][0])}-"
                     f"{_ha(c['estimated_ha_ci95'][1])})")
        lines.append(f"| {c['name']} | {_ha(c['mapped_ha'])} | {estimated} | "
                     f"{_fmt(c.get('users_accuracy'))} ({_ci(c.get('users_accuracy_ci95'))})"
                     f" | {_fmt(c.get('producers_accuracy'))} "
                     f"({_ci(c.get('producers_accuracy_ci95'))}) | {c.get('points', 0)} |")
    return lines


def overall_line(figures: dict[str, Any]) -> str:
    """``overall accuracy 0.812 (95% CI 0.790-0.834), N points, A ha mapped``."""
    if figures.get("overall_accuracy") is None:
        return f"no estimates: {figures.get('problem', 'no points')}"
    return (f"overall accuracy {figures['overall_accuracy']:.3f} (95% CI "
            f"{_ci(figures['overall_accuracy_ci95'])}), {figures['points_used']:,} points, "
            f"{figures['mapped_area_ha']:,.1f} ha mapped")


def left_out_line(result: dict[str, Any]) -> str:
    """``N points: M used; left out: 3 on nodata, 2 without a label``."""
    points = result["points"]
    words = {"outside_map": "off the map", "outside_area": "outside the area",
             "nodata": "on nodata", "unlabelled": "without a label"}
    parts = [f"{count:,} {words[why]}" for why, count in points["left_out"].items() if count]
    return (f"{points['total']:,} points, {points['used']:,} used; left out: "
            + (", ".join(parts) if parts else "none"))


def text_table(figures: dict[str, Any]) -> list[str]:
    """Fixed-width lines of a region's per-class figures, for a terminal."""
    lines = [f"{'class':<22} {'mapped ha':>11} {'estimated ha (95% CI)':>30} "
             f"{'UA (95% CI)':>19} {'PA (95% CI)':>19} {'points':>6}"]
    for c in figures["classes"]:
        ci = c.get("estimated_ha_ci95")
        estimated = _ha(c.get("estimated_ha")) + ("" if ci is None else
                                                  f" ({_ha(ci[0])}-{_ha(ci[1])})")
        ua, pa = (f"{_fmt(c.get(key), 2)} ({_ci(c.get(key + '_ci95'), 2)})"
                  for key in ("users_accuracy", "producers_accuracy"))
        lines.append(
            f"{c['name']:<22} {_ha(c['mapped_ha']):>11} {estimated:>30} {ua:>19} {pa:>19} "
            f"{c.get('points', 0):>6}")
    return lines


def _matrix(figures: dict[str, Any], key: str, digits: int | None) -> list[str]:
    matrix = figures["error_matrix"]
    names = matrix["classes"]
    lines = ["| map \\ reference | " + " | ".join(names) + " | total |",
             "|---|" + "---:|" * (len(names) + 1)]
    for name, row in zip(names, matrix[key], strict=True):
        cells = [str(v) if digits is None else _fmt(v, digits) for v in row]
        total = sum(v for v in row if v is not None)
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + (str(total) if digits is None else _fmt(total, digits)) + " |")
    return lines


def markdown(assessment: Assessment) -> str:
    """The ``report.md`` text."""
    result = assessment.to_dict()
    lines = ["# Accuracy and area assessment", "",
             f"- map: `{result['map']}`", f"- reference: `{result['reference']}` "
             f"(labels in `{result['label_column']}`)"]
    if result["aoi"]:
        lines.append(f"- area of interest: `{result['aoi']}`")
    lines += [f"- design: {result['design']} (estimators of Olofsson et al. 2014)",
              f"- {left_out_line(result)}", f"- {overall_line(result)}", "",
              "Areas are of the mapped extent; intervals are 95 %, "
              f"{INTERVALS[result['interval']].summary}.", "",
              *class_table(result), "", "![Mapped and estimated areas](areas.png)", "",
              "## Error matrix: sample counts", "", *_matrix(result, "counts", None), "",
              "## Error matrix: estimated area proportions", "",
              *_matrix(result, "proportions", 4), ""]
    for zone in result.get("zones", []):
        lines += [f"## Zone {zone['zone']}", "", overall_line(zone), ""]
        if zone.get("borrowed_strata"):
            lines += ["Strata with fewer than 2 points in the zone, estimated from the whole "
                      f"region's points: {', '.join(zone['borrowed_strata'])}.", ""]
        if "error_matrix" in zone:
            lines += [*class_table(zone), ""]
    return "\n".join(lines)


def csv_rows(assessment: Assessment) -> list[dict[str, Any]]:
    """The ``assessment.csv`` rows: per zone (``""``: the whole region) and class."""
    result = assessment.to_dict()
    regions = [("", result)] + [(zone["zone"], zone) for zone in result.get("zones", [])]
    rows = []
    for zone, figures in regions:
        for c in figures["classes"]:
            row: dict[str, Any] = {"zone": zone, "code": c["code"], "name": c["name"]}
            for key in CSV_FIGURES:
                if key.endswith("_ci95"):
                    low, high = c.get(key) or (None, None)
                    row[f"{key[:-5]}_low"], row[f"{key[:-5]}_high"] = low, high
                else:
                    row[key] = c.get(key)
            rows.append(row)
    return rows


def plot_areas(assessment: Assessment, path: str | os.PathLike[str]) -> None:
    """Bars of each class's mapped and estimated area, the latter with its 95 % interval."""
    import numpy as np
    from matplotlib.figure import Figure  # not pyplot: no global state, half the import

    classes = assessment.to_dict()["classes"]
    names = [c["name"] for c in classes]
    mapped = np.array([c["mapped_ha"] for c in classes])
    estimated = np.array([c["estimated_ha"] or 0.0 for c in classes])
    low = np.array([(c["estimated_ha_ci95"] or [e, e])[0] for c, e in zip(classes, estimated,
                                                                         strict=True)])
    high = np.array([(c["estimated_ha_ci95"] or [e, e])[1] for c, e in zip(classes, estimated,
                                                                          strict=True)])
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, mapped, 0.4, label="mapped (pixel count)", color="#9e9e9e")
    ax.bar(x + 0.2, estimated, 0.4, label="estimated (error-adjusted)", color="#3c82e6",
           yerr=[estimated - low, high - estimated], capsize=3, ecolor="black")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylabel("area (ha)")
    ax.set_title("Mapped and estimated areas, 95% intervals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(assessment: Assessment, directory: str | os.PathLike[str],
                 overwrite: bool = False) -> Path:
    """Write ``assessment.json``, ``assessment.csv``, ``report.md`` and ``areas.png``.

    Raises:
        OutputExistsError: ``directory`` exists, is not empty, and ``overwrite`` is false.
    """
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        (tmp / "assessment.json").write_text(json.dumps(assessment.to_dict(), indent=2) + "\n")
        rows = csv_rows(assessment)
        with open(tmp / "assessment.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "report.md").write_text(markdown(assessment))
        plot_areas(assessment, tmp / "areas.png")
    return Path(directory)

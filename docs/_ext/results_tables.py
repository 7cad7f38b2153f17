"""Sphinx extension: the tables of ``benchmarks/results.json``, rendered at build time.

In a page, a fence ``{results-tables} SECTION`` renders one top-level section of the
file (``maps``, ``inference``, ``onnx``...) as tables, so the figures on the benchmarks
page are always those of the file. Every top-level section has to be rendered by some
page: a section left out is a build warning (an error under ``-W``), so a new benchmark
cannot go unpublished.

The ``maps`` section has its own layout (one table per run: every mode's demo-scene and
held-out-scene scores); every other section is rendered generically: its scalar facts as
a field list, a list of flat records or a mapping of flat records as a table, nested
mappings as sub-tables, and lists of deeply nested records (per-epoch timings) only
counted.
"""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results.json"
_RENDERED_KEY = "results_tables_rendered"


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    """The parsed ``results.json``."""
    return json.loads(path.read_text())


def fmt(value: Any) -> str:
    """A cell's text: thousands separators for large numbers, 4 significant digits else."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value == 0 or abs(value) >= 1e-3:
            return f"{value:.4g}"
        return f"{value:.2e}"
    if value is None:
        return ""
    if isinstance(value, list) and all(_scalar(v) for v in value):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _flat(record: Any) -> bool:
    """A record whose values are scalars, lists of scalars or mappings of those (one level)."""
    if not isinstance(record, dict):
        return False
    for value in record.values():
        if isinstance(value, dict):
            if not all(_scalar(v) or (isinstance(v, list) and all(map(_scalar, v)))
                       for v in value.values()):
                return False
        elif isinstance(value, list):
            if not all(map(_scalar, value)):
                return False
        elif not _scalar(value):
            return False
    return True


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (one level, as `_flat` allows)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                out[f"{key}.{sub}"] = inner
        else:
            out[key] = value
    return out


def table(header: list[str], rows: Iterable[list[str]]) -> nodes.table:
    """A docutils table with one header row."""
    rows = list(rows)
    tbl = nodes.table(classes=["results-table"])
    group = nodes.tgroup(cols=len(header))
    tbl += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    thead = nodes.thead()
    group += thead
    thead += _row(header)
    tbody = nodes.tbody()
    group += tbody
    for row in rows:
        tbody += _row(row)
    return tbl


def _row(cells: list[str]) -> nodes.row:
    row = nodes.row()
    for text in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=text)
        row += entry
    return row


def field_list(facts: dict[str, Any]) -> nodes.field_list:
    """Scalar facts as a definition-like field list."""
    fields = nodes.field_list()
    for key, value in facts.items():
        field = nodes.field()
        field += nodes.field_name(text=key)
        body = nodes.field_body()
        body += nodes.paragraph(text=fmt(value))
        field += body
        fields += field
    return fields


def records_table(records: list[dict[str, Any]], key_name: str | None = None,
                  keys: list[str] | None = None) -> nodes.table:
    """A table of flat records, one column per key (in first-seen order)."""
    flat = [flatten(r) for r in records]
    columns: list[str] = []
    for record in flat:
        columns += [k for k in record if k not in columns]
    header = ([key_name] if key_name else []) + columns
    rows = [([k] if key_name else []) + [fmt(r.get(c)) for c in columns]
            for k, r in zip(keys or [""] * len(flat), flat, strict=True)]
    return table(header, rows)


def render_generic(value: Any, title: str, depth: int = 0) -> list[nodes.Node]:
    """Nodes for any JSON value: facts, tables of records, nested sub-sections."""
    out: list[nodes.Node] = []
    if isinstance(value, list):
        if value and all(_flat(v) for v in value):
            out.append(records_table(value))
        elif value and all(_scalar(v) for v in value):
            out.append(nodes.paragraph(text=f"{title}: {fmt(value)}"))
        else:
            out.append(nodes.paragraph(
                text=f"{title}: {len(value)} detailed records (see results.json)."))
        return out
    if not isinstance(value, dict):
        out.append(nodes.paragraph(text=f"{title}: {fmt(value)}"))
        return out
    facts = {k: v for k, v in value.items() if _scalar(v) or
             (isinstance(v, list) and all(map(_scalar, v)))}
    if facts:
        out.append(field_list(facts))
    rest = {k: v for k, v in value.items() if k not in facts}
    records = {k: v for k, v in rest.items() if _flat(v)}
    if len(records) >= 2:
        out.append(_caption(", ".join(records)))
        out.append(records_table(list(records.values()), key_name="", keys=list(records)))
        rest = {k: v for k, v in rest.items() if k not in records}
    for key, sub in rest.items():
        out.append(_caption(key))
        out.extend(render_generic(sub, key, depth + 1))
    return out


def _caption(text: str) -> nodes.paragraph:
    para = nodes.paragraph()
    para += nodes.strong(text=text)
    return para


MAP_COLUMNS = ["modality", "mode", "demo scene OA / edge OA", "held-out scenes OA mean "
               "(min-max) / edge OA mean", "other scenes OA / edge OA", "px/s demo scene",
               "px/s held-out (median)", "peak RSS MB"]


def _is_modes(value: Any) -> bool:
    """A mapping of mode names to results with a ``scenes`` list (one modality's maps)."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("scenes"), list) for m in value.values())


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _map_row(modality: str, mode: str, result: dict[str, Any]) -> list[str]:
    scenes = result["scenes"]
    demo = [s for s in scenes if s.get("scene") == "demo"]
    held = [s for s in scenes if str(s.get("scene", "")).startswith("scene")]
    other = [s for s in scenes if s not in demo and s not in held]
    held_oa = [s["oa"] for s in held if "oa" in s]
    held_edge = [s["edge_oa"] for s in held if "edge_oa" in s]
    return [
        modality, mode,
        f"{fmt(demo[0].get('oa'))} / {fmt(demo[0].get('edge_oa'))}" if demo else "",
        (f"{fmt(sum(held_oa) / len(held_oa))} ({fmt(min(held_oa))}-{fmt(max(held_oa))})"
         f" / {fmt(sum(held_edge) / len(held_edge)) if held_edge else ''}") if held_oa else "",
        "; ".join(f"{s.get('scene')}: {fmt(s.get('oa'))} / {fmt(s.get('edge_oa'))}"
                  for s in other),
        fmt(demo[0].get("px_per_s")) if demo else "",
        fmt(_median([s["px_per_s"] for s in held if "px_per_s" in s])),
        fmt(result.get("peak_rss_mb")),
    ]


def render_maps(maps: dict[str, Any]) -> list[nodes.Node]:
    """One table per run of ``maps.runs``: every modality and mode, scored per scene."""
    out: list[nodes.Node] = []
    facts = {k: v for k, v in maps.items() if k != "runs"}
    out.append(field_list(facts))
    runs = maps.get("runs", {})
    names = list(runs)
    for name in sorted(names, key=lambda n: (n != "demo", names.index(n))):
        run = runs[name]
        out.append(_caption(f"run {name}"))
        if not isinstance(run, dict):
            out.extend(render_generic(run, name))
            continue
        info = {k: v for k, v in run.items() if _scalar(v)}
        if info:
            out.append(field_list(info))
        rows = [_map_row(modality, mode, result)
                for modality, modes in run.items() if _is_modes(modes)
                for mode, result in modes.items()]
        if rows:
            out.append(table(MAP_COLUMNS, rows))
        for key, sub in run.items():
            if not _scalar(sub) and not _is_modes(sub):
                out.extend(render_generic(sub, key))
    return out


class ResultsTables(SphinxDirective):
    """``{results-tables} SECTION``: one top-level section of ``benchmarks/results.json``."""

    required_arguments = 1
    optional_arguments = 0
    has_content = False
    option_spec = {"class": directives.class_option}

    def run(self) -> list[nodes.Node]:
        """The section's tables."""
        section = self.arguments[0]
        self.env.note_dependency(str(RESULTS))
        results = load_results()
        if section not in results:
            logger.warning("results-tables: benchmarks/results.json has no section %r "
                           "(it has: %s)", section, ", ".join(results),
                           location=self.get_location())
            return []
        rendered = getattr(self.env, _RENDERED_KEY, set())
        rendered.add(section)
        setattr(self.env, _RENDERED_KEY, rendered)
        value = results[section]
        body = render_maps(value) if section == "maps" else render_generic(value, section)
        container = nodes.container(classes=["results-tables"])
        container += body
        return [container]


def _check_all_rendered(app: Sphinx, env: Any) -> None:
    rendered = getattr(env, _RENDERED_KEY, set())
    missing = [k for k in load_results() if k not in rendered]
    if missing:
        logger.warning("benchmarks/results.json sections rendered on no page: %s (add a "
                       "`{results-tables} SECTION` fence to docs/benchmarks.md)",
                       ", ".join(missing))


def _merge(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
    rendered = getattr(env, _RENDERED_KEY, set())
    setattr(env, _RENDERED_KEY, rendered | getattr(other, _RENDERED_KEY, set()))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``results-tables`` directive and the every-section check."""
    app.add_directive("results-tables", ResultsTables)
    app.connect("env-check-consistency", _check_all_rendered)
    app.connect("env-merge-info", _merge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True,
            "env_version": 1}

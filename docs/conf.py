"""Sphinx configuration of the discomkd_geo documentation (``make docs``).

Built with warnings as errors (``sphinx-build -W --keep-going``) by ``make docs`` and by
``make test``. Pages are MyST Markdown; the API reference is generated from the
docstrings (autosummary + napoleon), the CLI reference from the click commands
(sphinx-click), the benchmarks tables from ``benchmarks/results.json`` (``_ext/results_tables.py``)
and ``config.md`` from ``discomkd_geo/config.py`` (``python -m discomkd_geo.config``).
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import discomkd_geo  # noqa: E402

project = "discomkd_geo"
author = "discomkd_geo contributors"
copyright = "2024-2026, discomkd_geo contributors"
release = version = discomkd_geo.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "results_tables",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_templates", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]

# MyST: ```{directive} fences, $$ math off, heading anchors for in-page links.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: one page per module, generated at build time (docs/api/generated/).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# The QGIS plugin imports QGIS, which is not installed beside the package.
autodoc_mock_imports = ["qgis"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The signatures of this package annotate with third-party types that have no
# inventory here (no intersphinx: the build runs offline); unresolved type names are
# plain text, not broken links.
nitpicky = False
suppress_warnings = [
    # Pages dropped into docs/guide/ may start at any heading level.
    "myst.header",
    # docs/guide/ may be empty: its glob toctree then matches nothing.
    "toc.empty_glob",
    # Dataclass fields documented both by autodoc and as attributes in a class docstring.
    "autosectionlabel.*",
]

html_theme = "pydata_sphinx_theme"
html_title = "discomkd_geo"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"benchmarks": [], "cli": [], "config": []}


# The click help strings are plain text written for a terminal (`*_VV.tif`, `a|b`):
# escape the characters reStructuredText would read as markup before sphinx-click's
# lines are parsed.
_MARKUP = str.maketrans({"*": r"\*", "|": r"\|"})


def _escape_click_text(app: object, ctx: object, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        if not line.lstrip().startswith(".. "):
            lines[i] = line.translate(_MARKUP)


def setup(app: object) -> None:
    """Connect the escaping of the click help text to sphinx-click's events."""
    for part in ("description", "options", "arguments", "epilog", "envvars"):
        app.connect(f"sphinx-click-process-{part}", _escape_click_text)  # type: ignore[attr-defined]

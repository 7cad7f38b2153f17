"""The shared results file: every benchmark merges its figures under its own key."""

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def load_results() -> dict[str, Any]:
    """Everything recorded so far (empty before the first benchmark ran)."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def merge_results(key: str, value: Any) -> Path:
    """Replace ``key`` in the results file, keeping the other benchmarks' keys."""
    results = load_results()
    results[key] = value
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return RESULTS

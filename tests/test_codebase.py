"""Checks on the code itself: the rules of issue #29 that a review would otherwise re-find.

Each thing declared once, parameter lists a reader can hold, and library errors that speak
Python (the CLI translates them into its options: ``cli.error_message``).
"""

import ast
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from discomkd_geo.cli import compare, error_message, main, train
from discomkd_geo.errors import ResumeError, SettingsError
from discomkd_geo.training.map_score import MapScore

PACKAGE = Path(__file__).parents[1] / "discomkd_geo"
#: Where command-line words belong: the CLI itself and the QGIS plugin, which runs it.
CLI_FILES = {PACKAGE / "cli.py", *(PACKAGE / "qgis_plugin").glob("*.py")}
MAX_PARAMETERS = 12
_FLAG = re.compile(r"--[a-z]")


def _modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def _is_click_command(node: ast.FunctionDef) -> bool:
    # Click commands take one parameter per option by design (the options are the API).
    return any(re.search(r"(^|\.)(command|group)\b", ast.unparse(d)) for d in node.decorator_list)


def _strings(node: ast.AST) -> list[ast.Constant]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_function_outside_click_commands_takes_more_than_12_parameters() -> None:
    long = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                count = (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                         + (a.vararg is not None) + (a.kwarg is not None))
                if count > MAX_PARAMETERS and not _is_click_command(node):
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({count})")
    assert not long, "group these parameters (a settings or options dataclass): " + str(long)


def test_library_errors_name_no_command_line_flag() -> None:
    """Messages raised outside the CLI name Python parameters (``force=True``), never flags."""
    found = []
    for path, tree in _modules().items():
        if path in CLI_FILES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                strings = _strings(node.exc)
            elif path.name == "errors.py" and isinstance(node, ast.Call):
                strings = _strings(node)  # messages built in the errors' __init__
            else:  # a flag kept as a bare string ends up in a message too: ("--seeds", n)
                strings = [node] if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                                     and re.fullmatch(r"--[a-z][a-z0-9-]*", node.value)) else []
            found += [f"{path.relative_to(PACKAGE)}:{s.lineno} {s.value!r}"
                      for s in strings if _FLAG.search(s.value)]
    assert not found, "write the Python parameter and set the error's param: " + str(found)


def test_each_cli_option_is_declared_once() -> None:
    """Options shared by commands come from one helper (``_overwrite_option`` ...)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    flags: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("click.option",
                                                                    "click.Option"):
            flags.update(s.value for arg in node.args for s in _strings(arg)
                         if s.value.startswith("--"))
    assert [flag for flag, n in flags.items() if n > 1] == []


@pytest.mark.parametrize(("values", "param", "option"), [
    ({"scenes": -1}, "scenes", "--map-scenes"),
    ({"mode": "fast"}, "mode", "--map-mode"),
    ({"size": 32}, "size", "--map-size"),
])
def test_map_score_errors_name_the_field_and_the_cli_its_option(values: dict, param: str,
                                                               option: str) -> None:
    with pytest.raises(SettingsError) as raised:
        MapScore(**values)
    assert raised.value.param == param and "--" not in str(raised.value)
    assert error_message(raised.value, compare).startswith(f"{option}: ")


def test_compare_errors_speak_python_and_the_cli_shows_the_flag(tmp_path: Path) -> None:
    from discomkd_geo.config import Config
    from discomkd_geo.training.compare import compare as run_comparison

    with pytest.raises(SettingsError) as raised:
        run_comparison(Config(), tmp_path / "r", lrs=[])
    assert raised.value.param == "lrs" and str(raised.value).startswith("lrs: ")
    result = CliRunner().invoke(main, ["compare", "--out", str(tmp_path / "r"), "--lrs", ","])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --lrs: expected at least one learning rate"
    result = CliRunner().invoke(main, ["compare", "--out", str(tmp_path / "r"),
                                       "--methods", "bogus"])
    assert result.exit_code == 1 and result.output.startswith("Error: --methods: unknown")


def test_suggested_parameters_become_the_running_commands_options() -> None:
    # The same Python word names the option of whichever command raised the error.
    mixed = ResumeError("r/results.json", "made with another seeds; resume=True needs the "
                                          "same protocol", param="resume")
    assert error_message(mixed, compare) == ("r/results.json: made with another seeds; "
                                             "--resume needs the same protocol")
    missing = ResumeError("run", "nothing to resume; run without resume=True", param="resume")
    assert error_message(missing, train).endswith("run without --resume")
    assert error_message(missing).endswith("run without resume=True")  # no command: as is


def _mode_tests(tree: ast.AST) -> list[ast.AST]:
    """Where code tests a mapping mode by its name: ``mode == "dense"``, ``{...}[mode]``."""
    from discomkd_geo.inference.modes import MODES

    def is_mode(node: ast.AST) -> bool:
        return re.search(r"(^|\.)mode$", ast.unparse(node)) is not None

    def names_mode(node: ast.AST) -> bool:
        items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
        return any(isinstance(n, ast.Constant) and n.value in MODES for n in items)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(is_mode, operands)) and any(map(names_mode, operands)):
                found.append(node)
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict)
              and is_mode(node.slice) and any(map(names_mode, node.value.keys))):
            found.append(node)
    return found


def test_no_code_tests_a_mapping_mode_by_its_name() -> None:
    """The engine asks the mode's class (inference/modes.py) what to do, never its name."""
    sample = ('a = plan.tiling.mode == "dense"\nb = mode not in ("pixel", "windows")\n'
              'c = {"auto": 1, "dense": 2}[self.mode]\nd = mode == "squared"\n'
              'e = scene.mask in ("auto", "scl")')
    assert len(_mode_tests(ast.parse(sample))) == 3  # the check finds what it forbids
    found = [f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}"
             for path, tree in _modules().items() for node in _mode_tests(tree)]
    assert not found, "ask the MappingMode (inference/modes.py) instead: " + str(found)

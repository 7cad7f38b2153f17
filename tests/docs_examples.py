"""The shell and Python examples of the documentation: extraction and execution.

Convention (docs/contributing.md): in every page under ``docs/`` (and README.md), a fenced
block in ``bash``, ``sh``, ``shell``, ``console``, ``python`` or ``py`` is an example
and is run by ``tests/test_docs.py``, unless the line just above its fence is a MyST
comment saying why it cannot run here::

    % not-run: needs a real Sentinel-1 RTC scene

The examples of one page run in order, in one temporary directory that holds copies of
``tiles/demo``, ``configs/`` and ``benchmarks/`` and a ``demo_out/`` made by
``discomkd-geo demo --quick`` (so ``demo_out/run`` is a trained run, tiny: the demo
tutorial's, which runs first and makes it as ``demo_quick/``). Each page runs in a
process of its own, forked from one that imported the heavy libraries once
(``tests/warm_python.py``). Shell blocks run one command at a time (``\\`` continues a
line, ``#`` starts a comment; in ``console`` blocks only the ``$ `` lines are commands);
a plain ``discomkd-geo ...`` command runs in the page's process through click's test
runner, any other command in ``bash``. Python blocks share one namespace per page. Run a page
by hand with ``python tests/docs_examples.py docs/tutorials/05-gis.md WORKDIR``.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
NOT_RUN = re.compile(r"^%\s*not-run:\s*(?P<reason>\S.*)$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>", "2>&1"}


@dataclass
class Block:
    """One fenced example: where it is, its language and code, and why it is not run."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None = None

    @property
    def where(self) -> str:
        """``docs/page.md:LINE``."""
        try:
            shown = self.path.relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"

    @property
    def runnable(self) -> bool:
        """An example the tests run."""
        return self.language in SHELL | PYTHON and self.not_run is None


def _language(info: str) -> tuple[str, bool]:
    """The language of a fence's info string, and whether it is a code fence at all."""
    info = info.strip()
    directive = re.match(r"^\{(code-block|code|sourcecode)\}\s*(\S*)", info)
    if directive:
        return directive.group(2).lower(), True
    if info.startswith("{"):
        return "", False  # another directive: {toctree}, {eval-rst}, {results-tables}
    return (info.split()[0].lower() if info else ""), True


def extract(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown page, with its not-run reason if marked."""
    return _extract(path, path.read_text().splitlines(), 0)


def _extract(path: Path, lines: list[str], offset: int) -> list[Block]:
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match.group("fence")
        language, is_code = _language(match.group("info"))
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i])
            i += 1
        i += 1
        if not is_code:
            # Fences inside a directive (a {note} holding an example) are examples too.
            blocks += _extract(path, body, offset + start + 1)
            continue
        while body and re.match(r"^:[\w-]+:", body[0]):  # {code-block} options
            body.pop(0)
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1)
                         if lines[j].strip()), "")
        marked = NOT_RUN.match(previous)
        blocks.append(Block(path, offset + start + 1, language, "\n".join(body) + "\n",
                            marked.group("reason") if marked else None))
    return blocks


def doc_pages() -> list[Path]:
    """README.md and every Markdown page of the docs (the build's output excluded)."""
    pages = [REPO / "README.md"]
    pages += sorted(p for p in (REPO / "docs").rglob("*.md")
                    if "_build" not in p.parts and "generated" not in p.parts)
    return pages


def commands(block: Block) -> list[str]:
    """The shell commands of a block: continuations joined, comments and output dropped."""
    out: list[str] = []
    current = ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if block.language == "console" and not current:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current.strip():
        out.append(current)
    return out


def in_process_args(command: str) -> list[str] | None:
    """The arguments of a plain ``discomkd-geo`` command, or None if bash must run it."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        return None
    if not tokens or tokens[0] != "discomkd-geo":
        return None
    if any(t in OPERATORS or any(c in t for c in "$`*?~") for t in tokens):
        return None
    return tokens[1:]


def run_shell(block: Block, env: dict[str, str]) -> None:
    """Run a shell block's commands in order; the first failure raises with its output."""
    from click.testing import CliRunner

    from discomkd_geo.cli import main

    for command in commands(block):
        args = in_process_args(command)
        started = time.perf_counter()
        if args is not None:
            result = CliRunner().invoke(main, args, prog_name="discomkd-geo", env=env)
            output, code = result.output, result.exit_code
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                import traceback

                output += "".join(traceback.format_exception(result.exception))
        else:
            done = subprocess.run(["bash", "-eo", "pipefail", "-c", command], env=env,
                                  capture_output=True, text=True, timeout=600)
            output, code = done.stdout + done.stderr, done.returncode
        print(f"$ {command}  ({time.perf_counter() - started:.1f} s)\n{output}", flush=True)
        if code != 0:
            raise RuntimeError(f"{block.where}: exit status {code}: {command}\n{output}")


def run_page(page: Path, workdir: Path) -> dict[str, object]:
    """Run a page's runnable examples in ``workdir``; a summary of what ran."""
    os.chdir(workdir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}"}
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    ran = 0
    for block in extract(page):
        if not block.runnable:
            continue
        print(f"--- {block.where} ({block.language})", flush=True)
        if block.language in SHELL:
            run_shell(block, env)
        else:
            code = compile(block.code, block.where, "exec")
            exec(code, namespace)  # noqa: S102 - the docs' own examples
        ran += 1
    return {"page": str(page), "ran": ran}


if __name__ == "__main__":
    summary = run_page(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
    print(json.dumps(summary))

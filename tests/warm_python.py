"""A warm Python for the tests' subprocess runs: the heavy libraries imported once, a fork per run.

Every documentation page (``tests/test_docs.py``) and every command of the safe-loading
sweep (``tests/test_safe_loading.py``) runs in a process of its own, as a user runs it;
each fresh interpreter imported torch, Lightning, rasterio, GeoPandas, ... again, about
5 s of CPU per run on a 2-core machine. :class:`WarmPython` starts one server process that
imports those third-party libraries (never ``discomkd_geo``: each run imports the package
itself, as a fresh process does) and forks a child per run. The child is a new process in
a session of its own, with the run's working directory, its stdout and stderr in files,
stdin from ``/dev/null``, ``sys.argv`` and ``sys.path[0]`` as ``python -m MODULE ...`` or
``python SCRIPT ...`` set them, and its own exit status; it runs the module or script
through :mod:`runpy`, as the interpreter does, then what the interpreter does at exit
(threads joined, ``atexit`` handlers). What the imports printed on the server's stderr
(a fresh process would print it too) is prepended to every run's stderr. The server runs
nothing itself and forks only while it has one thread, so every child starts from the
same state: the libraries imported.

Run as a script, this file is the server (``python warm_python.py MODULE...``).
"""

import atexit
import contextlib
import importlib
import json
import os
import queue
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The third-party imports that cost seconds (``python -X importtime``), in import order.
PRELOAD = ("numpy", "torch", "torchvision", "lightning", "kornia", "scipy.stats", "pandas",
           "rasterio", "pyproj", "geopandas", "shapely", "dask.array", "xarray",
           "matplotlib.pyplot", "click")


# -- the server (and its children) ----------------------------------------------------------
def _exit_code(err: SystemExit) -> int:
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def _child(job: Mapping[str, object]) -> None:
    """Run one job in the forked child; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills the run and what it started
        os.chdir(str(job["cwd"]))
        os.environ.update(job["env"])  # type: ignore[arg-type]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin until it exits
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            out = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        argv = [str(a) for a in job["argv"]]  # type: ignore[attr-defined]
        try:
            if argv[0] == "-m":  # python -m MODULE ARGS: sys.path[0] is the directory
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = os.getcwd()
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:  # python SCRIPT ARGS: sys.path[0] is the script's directory
                sys.argv = argv
                sys.path[0] = str(Path(argv[0]).resolve().parent)
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as err:
            code = _exit_code(err)
        except BaseException as err:  # noqa: BLE001 - reported as the interpreter reports it
            traceback.print_exception(err.with_traceback(err.__traceback__.tb_next))  # type: ignore[union-attr]
            code = 1
        # The interpreter's exit: the threading module's exit hooks (executors stop their
        # idle workers), then every non-daemon thread joined, then the atexit handlers.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - never back into the server's loop
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(modules: Sequence[str]) -> None:
    """Import ``modules``, then fork a child per job read from stdin (one JSON line each).

    Replies on stdout, one JSON line each: ``{"ready": true}`` once imported, then per job
    ``{"pid": PID}`` when the child started and ``{"status": CODE}`` when it ended
    (negative: killed by that signal, as :mod:`subprocess` says).
    """
    for name in modules:
        importlib.import_module(name)
    replies = sys.stdout

    def reply(**message: object) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    sys.stderr.flush()
    reply(ready=True)
    while line := sys.stdin.readline():
        job = json.loads(line)
        if threading.active_count() != 1:  # a fork copies one thread: locks held stay held
            raise RuntimeError(f"cannot fork with threads running: {threading.enumerate()}")
        pid = os.fork()
        if pid == 0:
            _child(job)
        reply(pid=pid)
        _, status = os.waitpid(pid, 0)
        reply(status=os.waitstatus_to_exitcode(status))


# -- the client ------------------------------------------------------------------------------
class WarmPython:
    """A server process started with ``env``; :meth:`run` runs a command line in a fork.

    Args:
        env: the server's environment, which every run inherits (variables read at import
            time, as ``OMP_NUM_THREADS`` or ``MPLBACKEND``, must be set here).
        modules: the modules the server imports once.
    """

    def __init__(self, env: Mapping[str, str], modules: Sequence[str] = PRELOAD) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="warm-python-"))
        self._err = self._dir / "server.err"
        with self._err.open("w") as err:
            self._proc = subprocess.Popen([sys.executable, __file__, *modules], env=dict(env),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=err, text=True)
        self._replies: queue.Queue[dict[str, int] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next(600)
        self.preamble = self._err.read_text()  # what the imports printed
        self._runs = 0

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def _next(self, timeout: float) -> dict[str, int]:
        message = self._replies.get(timeout=timeout)
        if message is None:
            raise RuntimeError(f"the warm Python ended: {self._err.read_text()[-3000:]}")
        return message

    def run(self, argv: Sequence[object], cwd: Path | str, timeout: float,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGV...`` (``["-m", module, ...]`` or ``[script, ...]``) in ``cwd``.

        Like :func:`subprocess.run` with ``capture_output=True, text=True``: past
        ``timeout`` seconds the run's process group is killed and
        :class:`subprocess.TimeoutExpired` raised. ``env`` updates the server's environment.
        """
        self._runs += 1
        out, err = (self._dir / f"{self._runs}.{name}" for name in ("out", "err"))
        job = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": dict(env or {}),
               "stdout": str(out), "stderr": str(err)}
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        pid = self._next(60)["pid"]
        try:
            status = self._next(timeout)["status"]
        except queue.Empty:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._next(60)
            raise subprocess.TimeoutExpired(list(map(str, argv)), timeout,
                                            out.read_text(), err.read_text()) from None
        return subprocess.CompletedProcess(list(map(str, argv)), status, out.read_text(),
                                           self.preamble + err.read_text())

    def close(self) -> None:
        """Stop the server (killed: it holds nothing to save, and its exit takes seconds
        with torch loaded) and remove its files."""
        self._proc.kill()
        self._proc.wait()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        for path in self._dir.iterdir():
            path.unlink()
        self._dir.rmdir()


if __name__ == "__main__":
    serve(sys.argv[1:])

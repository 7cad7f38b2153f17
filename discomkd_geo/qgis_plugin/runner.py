"""Run the ``discomkd-geo`` executable with progress and cancel (standard library only).

The CLI draws tqdm bars only on a terminal; ``DISCOMKD_GEO_PROGRESS=always`` makes it
draw them on a pipe too, and :func:`run_cli` reads their percentages (tqdm's frame
``desc:  45%|...``, split on carriage returns) from stderr. Cancelling interrupts the
process (SIGINT, so its temporaries are removed as on Ctrl-C), kills it if it has not
stopped within :data:`GRACE_S`, and removes whatever temporaries it left beside the
outputs: the CLI writes every output to ``.<stem>.<pid>.<random>.partial<suffix>`` and
renames it only when complete, so a cancelled run leaves nothing at the target paths.
"""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

#: Name of the Processing setting holding the ``discomkd-geo`` executable (declared here,
#: where the provider and the algorithms both import it), and of the environment
#: variable overriding it (tests, CI).
EXECUTABLE_SETTING = "DISCOMKD_GEO_EXECUTABLE"
#: Written by ``discomkd-geo qgis install`` beside the plugin: ``{"executable": path}``.
SETTINGS_FILE = "install.json"
#: Seconds a cancelled process gets to clean up after SIGINT before it is killed.
GRACE_S = 10.0
_PERCENT = re.compile(r"(\d{1,3})%\|")


class CliError(Exception):
    """The command failed; the message is its ``Error: ...`` line (or its last line)."""


class Cancelled(Exception):
    """The user cancelled the run; the process was stopped and its temporaries removed."""


def default_executable():
    """The executable ``qgis install`` recorded, else ``discomkd-geo`` on the PATH."""
    settings = Path(__file__).with_name(SETTINGS_FILE)
    if settings.is_file():
        recorded = json.loads(settings.read_text()).get("executable")
        if recorded:
            return recorded
    return shutil.which("discomkd-geo") or "discomkd-geo"


def _read(stream, out):
    """Put every chunk of ``stream`` on the queue ``out``, then ``None``."""
    for chunk in iter(lambda: stream.read1(4096), b""):
        out.put(chunk)
    out.put(None)


def _stop(proc):
    """Interrupt, then (after GRACE_S) kill the process."""
    if sys.platform != "win32":
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(GRACE_S)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


def remove_partials(pid, outputs):
    """Remove the temporaries process ``pid`` left in the directories of ``outputs``."""
    for directory in {Path(p).resolve().parent for p in outputs}:
        for leftover in directory.glob(f".*.{pid}.*.partial*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def run_cli(args, executable=None, progress=None, log=None, canceled=None, outputs=()):
    """Run ``executable args...``; return its stdout.

    Args:
        args: the command line after the executable (``["predict", ...]``).
        executable: the ``discomkd-geo`` to run (default: :func:`default_executable`,
            or ``$DISCOMKD_GEO_EXECUTABLE``).
        progress: called with a percentage (0-100) as the bars advance.
        log: called with every complete stderr line that is not a progress frame.
        canceled: polled about five times a second; true stops the run.
        outputs: the paths the command writes (their directories are cleaned on cancel).

    Raises:
        Cancelled: ``canceled()`` became true.
        CliError: the command exited non-zero, or could not be started.
    """
    executable = executable or os.environ.get(EXECUTABLE_SETTING) or default_executable()
    env = dict(os.environ, DISCOMKD_GEO_PROGRESS="always")
    try:
        proc = subprocess.Popen([executable, *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    except OSError as err:
        raise CliError(f"cannot run {executable}: {err.strerror}; set the discomkd-geo "
                       "executable in the Processing options (Providers > DisCoM-KD)"
                       ) from err
    with proc:  # closes the pipes and reaps the process whatever happens
        chunks = queue.Queue()
        stdout = []
        readers = [threading.Thread(target=_read, args=(proc.stderr, chunks), daemon=True),
                   threading.Thread(target=lambda: stdout.append(proc.stdout.read()),
                                    daemon=True)]
        for reader in readers:
            reader.start()
        lines = _follow(proc, chunks, progress, log, canceled, outputs)
        rc = proc.wait()
        for reader in readers:
            reader.join()
    if rc != 0:
        errors = [line for line in lines if line.startswith("Error:")]
        raise CliError((errors or lines or [f"exit status {rc}"])[-1])
    return b"".join(stdout).decode("utf-8", "replace")


def _follow(proc, chunks, progress, log, canceled, outputs):
    """Report the stderr chunks on ``chunks`` until it ends; return its other lines.

    Raises:
        Cancelled: ``canceled()`` became true (the process is stopped, its temporaries
            removed).
    """
    lines, pending, done = [], "", False
    while not done:
        if canceled is not None and canceled():
            _stop(proc)
            remove_partials(proc.pid, outputs)
            raise Cancelled("cancelled")
        try:
            chunk = chunks.get(timeout=0.2)
        except queue.Empty:
            continue
        done = chunk is None
        pending += "" if done else chunk.decode("utf-8", "replace")
        *frames, pending = re.split(r"[\r\n]", pending + ("\n" if done else ""))
        for frame in frames:
            match = _PERCENT.search(frame)
            if match and progress is not None:
                progress(min(100, int(match.group(1))))
            elif frame.strip() and not match:
                lines.append(frame)
                if log is not None:
                    log(frame)
    return lines

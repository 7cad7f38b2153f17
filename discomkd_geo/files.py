"""Safe outputs: write to a temporary sibling, move onto the target only on success.

Every writer in the package goes through these helpers, so an interrupted or failed run
never leaves a half-written file at the target path, and an existing target is only
replaced when the caller asked for ``overwrite``. Temporary names carry the writing
process's id (``.<stem>.<pid>.<random>.partial<suffix>``), so a later write to the same
target removes the leftovers of a killed process, and never those of a live one.
"""

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, OutputExistsError


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Fail early, before any work, if ``path`` exists and may not be replaced.

    An existing empty directory counts as absent, as ``mkdir -p`` users expect.
    """
    path = Path(path)
    empty_dir = path.is_dir() and not any(path.iterdir())
    if not overwrite and path.exists() and not empty_dir:
        raise OutputExistsError(path)
    return path


def check_parent(path: str | os.PathLike[str]) -> Path:
    """Fail if the directory a file goes into is missing or not a directory (as GDAL does).

    Raises:
        OutputError: naming the missing directory, or the file standing in its place.
    """
    path = Path(path)
    parent = path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise OutputError(path, f"{existing} is not a directory")
    if existing != parent:
        raise OutputError(path, f"directory {parent} does not exist; create it first")
    return path


def check_outputs(outputs: Mapping[str, str | os.PathLike[str]], overwrite: bool,
                  inputs: Mapping[str, str | os.PathLike[str]] | None = None) -> None:
    """Check every output of one command before any work.

    No two outputs at one path, none onto an input, each in an existing directory and
    replaceable.

    Args:
        outputs: what each output is (``map``, ``probabilities``, ...) -> its path.
        overwrite: whether existing outputs may be replaced.
        inputs: what each input is -> its path; an output may not replace one.

    Raises:
        OutputError: two outputs (or an output and an input) share a path, or a
            directory is missing.
        OutputExistsError: an output exists and ``overwrite`` is false.
    """
    seen: dict[Path, str] = {Path(p).resolve(): f"the {name} input"
                             for name, p in (inputs or {}).items()}
    for name, path in outputs.items():
        key = Path(path).resolve()
        if key in seen:
            raise OutputError(path, f"is both {seen[key]} and the {name} output; "
                                    "give each its own path")
        seen[key] = f"the {name} output"
        check_writable(check_parent(path), overwrite)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(path: Path, prefix: str, suffix: str) -> None:
    """Remove temporaries of ``path`` (and their sidecars) left by processes that are gone."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.\w+\.partial{re.escape(suffix)}(\..*)?")
    for entry in path.parent.glob(f"{glob.escape(prefix)}*.partial*"):
        match = pattern.fullmatch(entry.name)
        if match and not _alive(int(match.group(1))):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temporary(path: Path, prefix: str, suffix: str, directory: bool) -> Path:
    """A fresh temporary beside ``path`` named after this process (stale ones removed)."""
    remove_stale(path, prefix, suffix)
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.",
                                         suffix=f".partial{suffix}", dir=path.parent))
        fd, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.",
                                    suffix=f".partial{suffix}", dir=path.parent)
    except OSError as err:
        raise OutputError(path, f"cannot write in {path.parent} ({err.strerror})") from err
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    The temporary name keeps the target's suffix (GDAL picks drivers and sidecars by it).
    Sidecars GDAL may leave beside it (``.aux.xml``, ``.ovr``) are removed either way.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        OutputError: the directory is missing or cannot be written.
    """
    path = check_writable(check_parent(path), overwrite)
    tmp = _temporary(path, f".{path.stem}.", path.suffix, directory=False)
    try:
        yield tmp
        if overwrite and path.is_dir():
            _remove(path)
        os.replace(tmp, path)
    finally:
        for leftover in path.parent.glob(f"{glob.escape(tmp.name)}*"):
            _remove(leftover)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; it becomes ``path`` on success.

    Missing parent directories are created (as ``mkdir -p``).

    Raises:
        OutputExistsError: ``path`` is a non-empty directory or a file and ``overwrite``
            is false.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, f".{path.name}.", "", directory=True)
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)

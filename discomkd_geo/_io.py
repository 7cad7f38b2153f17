"""Safe outputs: write to a temporary sibling, move onto the target only on success.

Every writer in the package goes through these helpers, so an interrupted or failed run
never leaves a half-written file at the target path, and an existing target is only
replaced when the caller asked for ``overwrite``.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputExistsError


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Fail early, before any work, if ``path`` exists and may not be replaced.

    An existing empty directory counts as absent, as ``mkdir -p`` users expect.
    """
    path = Path(path)
    empty_dir = path.is_dir() and not any(path.iterdir())
    if not overwrite and path.exists() and not empty_dir:
        raise OutputExistsError(path)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    The temporary name keeps the target's suffix (GDAL picks drivers and sidecars by it).
    Sidecars GDAL may leave beside it (``.aux.xml``, ``.ovr``) are removed either way.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        yield tmp
        if overwrite and path.is_dir():
            _remove(path)
        os.replace(tmp, path)
    finally:
        for leftover in path.parent.glob(f"{tmp.name}*"):
            _remove(leftover)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; it becomes ``path`` on success.

    Raises:
        OutputExistsError: ``path`` is a non-empty directory or a file and ``overwrite``
            is false.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)

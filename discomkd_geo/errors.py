"""Exceptions with one-line messages that say what went wrong, where, and the way out.

Modelled on ``torchgeo.datasets.errors``. The CLI prints ``Error: <message>`` for any
:class:`DiscomkdGeoError` and exits non-zero, so every message must be one line that
names the file (or config key) and the problem. Messages speak Python: a parameter that
fixes the problem is written ``name=value`` (``scale=10000``, ``force=True``) and the
error's ``param`` names it; the CLI rewrites such words into its options
(``--ms-scale 10000``, ``--force``), so neither user is told to pass what they cannot.
"""

import os
from typing import Any


class DiscomkdGeoError(Exception):
    """Base class of every error this package raises on purpose.

    Attributes:
        param: the Python parameter or settings field the error is about (``None``: none
            in particular); the CLI names the matching command-line option instead.
    """

    param: str | None = None


class PathError(DiscomkdGeoError):
    """Something is wrong with one path (or address): ``<path>: <problem>``.

    Args:
        path: the offending file, directory or scheduler address.
        problem: what is wrong with it, as a sentence fragment; a parameter it suggests
            is written the Python way (``scale=10000``, ``force=True``).
        param: the Python parameter that fixes it, if one does.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str,
                 param: str | None = None) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.param = param
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its arguments: Dask workers send errors back to the client.
        return type(self), (self.path, self.problem, self.param)


class InputFileError(PathError, ValueError):
    """A file exists but cannot be used: unreadable, wrong bands, dtype, CRS, ..."""


class OutputError(PathError, ValueError):
    """An output cannot be written there: missing directory, collision, unwritable place."""


class DatasetSplitError(PathError, ValueError):
    """A dataset split the run needs is empty or lacks classes (``path``: the root)."""


class ResumeError(PathError, ValueError):
    """A run directory cannot be resumed (``path``: the run directory)."""


class SchedulerError(PathError):
    """A Dask scheduler is unreachable, or its workers cannot read the inputs."""


class DatasetNotFoundError(DiscomkdGeoError, FileNotFoundError):
    """A dataset is not found under ``root``.

    Args:
        root: the directory that was searched.
        what: what was looked for there.
    """

    def __init__(self, root: str | os.PathLike[str], what: str) -> None:
        self.root = os.fspath(root)
        self.what = what
        super().__init__(
            f"{what} not found in root={self.root!r}; point root at the unpacked data, "
            "download it (download=True, config data.download: true) "
            "or generate it (discomkd-geo synth eurosat DIR)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.root, self.what)


class ConfigError(DiscomkdGeoError, ValueError):
    """A configuration value is unknown, missing or of the wrong type.

    Args:
        key: dotted key of the offending entry, e.g. ``trainer.max_epochs``.
        problem: what is wrong with it.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key, self.problem)


class SettingsError(DiscomkdGeoError, ValueError):
    """A setting (a function argument or a settings field) has a value it cannot take.

    Args:
        param: the parameter's Python name, e.g. ``stride``.
        problem: what is wrong with the value.
    """

    def __init__(self, param: str, problem: str) -> None:
        self.param = param
        self.problem = problem
        super().__init__(f"{param}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.param, self.problem)


class CheckpointError(DiscomkdGeoError, ValueError):
    """A checkpoint cannot serve the request (missing modality, other band layout, ...)."""


class OutputExistsError(PathError, FileExistsError):
    """The output path exists and ``overwrite`` was not given."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, "already exists; pass overwrite=True to replace it",
                         param="overwrite")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path,)


class UntrustedFileError(PathError):
    """A model file's pickle would call code beyond tensors and plain values on load.

    Not a ``ValueError``: it is never taken for an unreadable file and wrapped.
    """

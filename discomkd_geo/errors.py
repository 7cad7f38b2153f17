"""Exceptions with one-line messages that say what went wrong, where, and the way out.

Modelled on ``torchgeo.datasets.errors``. The CLI prints ``Error: <message>`` for any
:class:`DiscomkdGeoError` and exits non-zero, so every message must be one line that
names the file (or config key) and the problem.
"""

import os


class DiscomkdGeoError(Exception):
    """Base class of every error this package raises on purpose."""


class InputFileError(DiscomkdGeoError, ValueError):
    """A file exists but cannot be used: unreadable, wrong bands, dtype, CRS, ...

    Args:
        path: the offending file.
        problem: what is wrong with it, as a sentence fragment.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetNotFoundError(DiscomkdGeoError, FileNotFoundError):
    """A dataset is not found under ``root``.

    Args:
        root: the directory that was searched.
        what: what was looked for there.
    """

    def __init__(self, root: str | os.PathLike[str], what: str) -> None:
        self.root = os.fspath(root)
        super().__init__(
            f"{what} not found in root={self.root!r}; point root at the unpacked data, "
            "download it (--download, config data.download: true, Python download=True) "
            "or generate it (discomkd-geo synth eurosat DIR)"
        )


class ConfigError(DiscomkdGeoError, ValueError):
    """A configuration value is unknown, missing or of the wrong type.

    Args:
        key: dotted key of the offending entry, e.g. ``trainer.max_epochs``.
        problem: what is wrong with it.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"config key {key!r}: {problem}")


class CheckpointError(DiscomkdGeoError, ValueError):
    """A checkpoint cannot serve the request (missing modality, other band layout, ...)."""


class OutputExistsError(DiscomkdGeoError, FileExistsError):
    """The output path exists and ``overwrite`` was not given."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: already exists; pass --overwrite to replace it")

"""One ``discomkd_geo`` logger, and the third-party noise we keep out of it.

Every module reports through :data:`log` (``logging.getLogger("discomkd_geo")``); the
package never prints. The CLI calls :func:`configure` once per command: ``-q`` keeps
warnings and errors only, ``-v`` adds debug lines and lets Lightning speak freely.

:func:`quiet_third_party` silences, message by message, the lines other libraries print
that tell a user nothing about their run: Lightning's hardware report, its adverts for
cloud products, notices about arguments we pass on purpose, checkpoint-restoring chatter,
and a deprecation warning Lightning raises inside PyTorch. Each filter names its message,
so anything new or unexpected still reaches the user.
"""

import logging
import os
import re
import sys
import warnings

#: The package's logger; its records go to stderr as plain lines (see :func:`configure`).
log = logging.getLogger("discomkd_geo")

#: Lightning ``rank_zero_info`` lines that carry no information about the run.
LIGHTNING_NOISE: tuple[str, ...] = (
    r"(GPU|TPU|HPU) available: ",  # hardware report; the config names the accelerator
    r"💡 Tip: ",  # adverts for litlogger / litmodels
    r"`Trainer\(limit_\w+_batches=1(\.0)?\)` was configured so ",  # we pass the default
    r"Restoring states from the checkpoint path at ",  # we test each best checkpoint
    r"Loaded model weights from the checkpoint at ",
    r"`Trainer.fit` stopped: `max_epochs=\d+` reached",  # our epoch lines say so
)

#: Loggers Lightning emits those lines through (the last one imported wins, so all).
LIGHTNING_LOGGERS: tuple[str, ...] = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)

#: Warnings (category, message regex) that are harmless to our users.
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # Lightning 2.6 flattens batches with torch's deprecated LeafSpec; nothing to act on.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Lightning suggests DataLoader workers; the demo's patches load faster in-process.
    (UserWarning, r"The '\w+_dataloader' does not have many workers"),
)


class MessageFilter(logging.Filter):
    """Drops records whose message matches one of ``patterns`` (``re.match``).

    Args:
        patterns: regular expressions anchored at the start of the message.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless its message is known noise."""
        return self.pattern.match(record.getMessage()) is None


_LIGHTNING_FILTER = MessageFilter(LIGHTNING_NOISE)


def quiet_third_party() -> None:
    """Install the message-scoped filters for Lightning's and PyTorch's noise (idempotent)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _LIGHTNING_FILTER not in logger.filters:
            logger.addFilter(_LIGHTNING_FILTER)
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def loud_third_party() -> None:
    """Remove the Lightning log filters again (``-v``: show everything)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).removeFilter(_LIGHTNING_FILTER)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to the *current* ``sys.stderr``.

    Test runners and notebooks replace ``sys.stderr``; binding it once would write to a
    stream that is gone.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record to today's stderr."""
        # Not setStream(): it flushes the previous stream first, which may be closed by
        # now (pytest closes each test's captured stderr).
        self.stream = sys.stderr
        super().emit(record)


class _Formatter(logging.Formatter):
    """Plain lines for information, ``warning: ...`` for warnings, ``debug: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        """The message, prefixed by its level unless it is an information line."""
        message = super().format(record)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname.lower()}: {message}"


def configure(verbosity: int = 0) -> None:
    """Route the package's log to stderr at the level chosen on the command line.

    Args:
        verbosity: ``-1`` (``-q``): warnings and errors only; ``0``: progress lines;
            ``1`` or more (``-v``): debug lines too, and Lightning's own messages unfiltered.
    """
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    log.setLevel(level)
    log.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        log.addHandler(handler)
    # Lightning prints its own information lines; they follow the user's verbosity too.
    # (Set on the emitting loggers: importing Lightning resets its top-level logger.)
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbosity < 0 else logging.NOTSET)
    quiet_third_party()
    if verbosity > 0:
        loud_third_party()


def progress_disabled(progress: bool) -> bool | None:
    """``tqdm``'s ``disable`` for a bar the caller wants when ``progress``.

    ``None`` lets tqdm draw only on a terminal: a log file gets no carriage-return frames.
    ``DISCOMKD_GEO_PROGRESS=always`` draws on a pipe too: the QGIS plugin reads the
    percentages from the frames.
    """
    if not progress:
        return True
    return False if os.environ.get("DISCOMKD_GEO_PROGRESS") == "always" else None

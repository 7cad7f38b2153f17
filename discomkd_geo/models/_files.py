"""Reading torch files safely, and what can go wrong, turned into one-line messages.

Shared by :mod:`.predictor` (predictors and training checkpoints), :mod:`.backbones`
(encoder weights) and the training code (teachers, resumed runs). Every file is read
with ``torch.load(..., weights_only=True)``: its pickle may then build tensors, plain
containers and numbers only, so a shared model file cannot run code on load. Files this
package writes need nothing more (:func:`load_torch_file` checks it in the tests). A file
whose pickle asks for anything else is refused with :class:`UntrustedFileError`, unless
the caller passes ``trusted=True`` (``--trust-checkpoint`` on the command line).
``torch.load`` has no single error for "this is not a torch file": depending on the
bytes, junk raises any of :data:`LOAD_ERRORS`.
"""

import os
import pickle
import re
from typing import Any

import torch

from ..errors import UntrustedFileError

#: Exceptions ``torch.load`` raises on unreadable, truncated or junk files
#: (UnicodeDecodeError is a ValueError).
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError,
)


def load_error_message(err: BaseException, limit: int = 120) -> str:
    """One line describing a :data:`LOAD_ERRORS` exception (torch's are multi-line)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _refused_global(err: BaseException) -> str | None:
    """The global a weights-only load refused, or ``None`` if ``err`` is another failure.

    A pickle reaches any callable through a GLOBAL opcode, which torch's weights-only
    unpickler names when it refuses it ("... unsupported GLOBAL posix.system ...");
    junk bytes fail on other opcodes.
    """
    found = re.search(r"\bGLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else None


def load_torch_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    trusted: bool = False) -> Any:
    """``torch.load`` a file without letting it run code unless ``trusted``.

    Args:
        path: the file.
        map_location: device to load tensors on.
        trusted: read the file with full pickle (it may run any code: only for files
            you made yourself).

    Returns:
        the unpickled object.

    Raises:
        UntrustedFileError: the file needs more than tensors and plain values and
            ``trusted`` is false. Nothing of the file has run.
        FileNotFoundError: no such file.
        Exception: one of :data:`LOAD_ERRORS` for unreadable or junk files.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is None:
            raise
        raise UntrustedFileError(
            path, f"refused: loading it would call {name}, which could run any code; "
                  "load it only if you made it yourself, with trusted=True",
            param="trusted") from None

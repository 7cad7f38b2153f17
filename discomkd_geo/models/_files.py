"""What can go wrong when ``torch.load`` reads a file, turned into one-line messages.

Shared by :mod:`.predictor` (predictors and training checkpoints) and :mod:`.backbones`
(encoder weights). ``torch.load`` has no single error for "this is not a torch file":
depending on the bytes, junk raises any of the exceptions below.
"""

import pickle

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

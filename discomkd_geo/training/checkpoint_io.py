"""Checkpoints written atomically, in a background thread.

``last.ckpt`` of a ResNet-18 DisCoM-KD (four encoders, Adam's two moments) is 540 MiB,
written at the end of every epoch; writing it synchronously stalled training for
seconds per epoch. :class:`BackgroundCheckpointIO` (a Lightning ``CheckpointIO``
plugin) copies the checkpoint's tensors at the moment Lightning asks for the save
(so the file holds exactly that epoch's state, whatever training does next) and writes
the copy while training goes on. Every file is written beside its target and moved
into place (:func:`~discomkd_geo.files.atomic_path`), so a process killed at any
moment leaves the previous checkpoint whole: a resumed run still ends bitwise equal
to an uninterrupted one.
"""

import threading
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..files import atomic_path


class BackgroundCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint atomically in a thread, one write at a time.

    A save waits for the previous write first, so at most one copy of the state is held
    besides the live one. Loading or removing a checkpoint, and :meth:`teardown` (Lightning
    calls it when ``fit``/``test`` end, normally or by an error), wait for the pending
    write and raise its error, so a finished ``fit`` has every file in place.
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        """Copy ``checkpoint``'s tensors (to the CPU) and write the copy in the background."""
        self.wait()
        # A copy taken now: the optimiser changes the live weights in place.
        copy = apply_to_collection(checkpoint, torch.Tensor,
                                   lambda t: t.detach().to("cpu", copy=True))
        self._thread = threading.Thread(target=self._write, args=(copy, path, storage_options),
                                        name=f"checkpoint {Path(path).name}")
        self._thread.start()

    def _write(self, checkpoint: dict[str, Any], path: str | Path,
               storage_options: Any | None) -> None:
        try:
            with atomic_path(path, overwrite=True) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)
        except BaseException as err:  # raised in the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Block until the pending write is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Wait for the pending write, then load ``path``."""
        self.wait()
        return super().load_checkpoint(path, map_location, weights_only)

    def remove_checkpoint(self, path: str | Path) -> None:
        """Wait for the pending write, then remove ``path``."""
        self.wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        """Wait for the pending write (end of ``fit`` or ``test``)."""
        self.wait()

"""How a map's pixels are classified: the mapping modes, one small class each.

Part of the engine (io -> tiling -> engine -> writers): the ``mode`` mapping setting names
one of :data:`MODES`, and the engine asks the :class:`MappingMode` it names
(:attr:`.engine.Plan.mode`) what to do, never the name itself:

- ``pixel``: each branch's encoders and per-pixel decoder run once per scene-anchored
  block, a class for every input pixel; the probabilities are then smoothed
  (:mod:`.smoothing`);
- ``windows``: every window classified on its own, as a model sees a training patch;
- ``dense``: each block's encoders run once and every window's features are pooled from
  their feature maps (fine strides are then cheap: the default stride is a quarter patch);
- ``auto`` (the default) is resolved when the map is planned (:meth:`Auto.resolve`):
  ``pixel`` when a model has a per-pixel decoder (the branches without one classified
  window by window inside its blocks), else ``windows``.

Adding a mode is one class here, added to :data:`MODES`: the ``mode`` setting's type
(:data:`.settings.Mode`) and help, and the choices of the ``predict`` and ``compare``
commands, follow. The QGIS plugin cannot import the package and lists the names itself
(``tests/test_modes.py`` checks that they agree). This module imports nothing heavy:
``discomkd-geo --help`` reads it.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from ..errors import SettingsError

if TYPE_CHECKING:
    from ..models.info import BranchPredictor as Predictor


class MappingMode:
    """How the engine classifies a map's pixels (see the module docstring).

    Subclasses name themselves (:attr:`name`), describe themselves (:attr:`help`,
    :attr:`summary`) and set the flags where they differ from the base's: every branch
    classified window by window, the windows one by one, the chunks cut freely. Instances
    hold nothing (the plan keeps the mode's name, :attr:`.engine.Plan.mode` looks it up).
    """

    #: The ``mode`` setting's value that selects the mode.
    name: ClassVar[str]
    #: What it does, in the ``mode`` setting's help (``NAME: HELP; ...``).
    help: ClassVar[str]
    #: How it maps, in ``compare``'s report (:meth:`describe`; ``{stride}``: the stride).
    summary: ClassVar[str]
    #: Whether the branches give every input pixel its probabilities with their per-pixel
    #: decoder (else as the mean of the windows covering it).
    per_pixel: ClassVar[bool] = False
    #: Whether windows are pooled from the encoders' feature maps of a whole block (read
    #: with the encoders' halo) instead of classified one by one.
    pools_windows: ClassVar[bool] = False
    #: Whether the encoders run on scene-anchored blocks (:attr:`.engine.Plan.output_block`)
    #: and chunks are whole blocks, so that a pixel's value never depends on the chunking.
    blocked: ClassVar[bool] = False
    #: Whether the map's probabilities are smoothed (:mod:`.smoothing`; in two stages).
    smooths: ClassVar[bool] = False

    def resolve(self, predictors: Mapping[str, "Predictor"]
                ) -> tuple["MappingMode", frozenset[str]]:
        """The mode a map with ``predictors`` is made in, and the branches it windows.

        Returns:
            The mode itself and no branch: every branch is classified as the mode says
            (:class:`Auto` chooses instead).
        """
        return self, frozenset()

    def default_stride(self, patch: int) -> int:
        """The window step when the ``stride`` setting is unset: half the patch."""
        return max(1, patch // 2)

    def block_unit(self, patch: int, stride: int) -> int:
        """What the block side is rounded to a whole number of: strides."""
        return stride

    def check(self, predictors: Mapping[str, "Predictor"], windowed: frozenset[str],
              coarse: bool) -> None:
        """Raise unless the mode can map with ``predictors`` (``coarse``: coarse output).

        Args:
            predictors: the branches, by modality.
            windowed: the branches classified window by window whatever the mode.
            coarse: the ``coarse`` setting.

        Raises:
            CheckpointError: a branch that cannot run in the mode.
            SettingsError: coarse output the mode cannot give.
        """

    def describe(self, stride: int) -> str:
        """How the mode maps, in words, with windows every ``stride`` pixels."""
        return self.summary.format(stride=stride)


class Auto(MappingMode):
    """Each branch in its best mode: per pixel with a decoder, else window by window."""

    name = "auto"
    help = ("pixel for the models with a per-pixel decoder, the others window by window "
            "inside its blocks; windows when no model has a decoder")
    summary = "mode auto (pixel with a decoder, else windows at stride {stride})"

    def resolve(self, predictors: Mapping[str, "Predictor"]
                ) -> tuple[MappingMode, frozenset[str]]:
        """``pixel`` with the branches without a decoder windowed, or ``windows``.

        A fused map is no worse for a branch without a decoder (the demo's MS branch)
        than that branch's own map; with no decoder at all, the map is ``windows``.
        """
        windowed = frozenset(m for m, p in predictors.items() if not p.has_decoder)
        if len(windowed) == len(predictors):
            return Windows(), frozenset()
        return Pixel(), windowed


class Pixel(MappingMode):
    """Encoders and per-pixel decoder once per block: a class for every input pixel."""

    name = "pixel"
    help = ("encoders and the decoder once per block, a class for every input pixel (models "
            "given a decoder: fit-decoder, or model.decoder_epochs)")
    summary = "pixel mode (per-pixel decoder)"
    per_pixel = True
    blocked = True
    smooths = True

    def block_unit(self, patch: int, stride: int) -> int:
        """Patches: blocks start on whole patches (whole encoder cells) of the scene."""
        return patch

    def check(self, predictors: Mapping[str, "Predictor"], windowed: frozenset[str],
              coarse: bool) -> None:
        """Every branch not windowed needs a decoder; the output is never coarse."""
        for modality, predictor in predictors.items():
            if modality not in windowed:
                predictor.pixel_halo()  # raises for a branch without a decoder
        if coarse:
            raise SettingsError("coarse", f"mode {self.name!r} maps every input pixel; coarse "
                                          f"output is for modes {Windows.name!r} and "
                                          f"{Dense.name!r}")


class Windows(MappingMode):
    """Every window classified on its own, in fixed-size batches."""

    name = "windows"
    help = "every window classified on its own"
    summary = "windows mode, stride {stride}"


class Dense(MappingMode):
    """Encoders once per block, every window's features pooled from their feature maps."""

    name = "dense"
    help = ("encoders once per block, windows pooled from their feature maps (several times "
            "faster at fine strides, but windows then see their real neighbours instead of "
            "the zero padding of training: check its accuracy for your model first)")
    summary = "dense mode"
    pools_windows = True
    blocked = True

    def default_stride(self, patch: int) -> int:
        """A quarter patch (16 px for 64 px): pooled windows make fine strides cheap."""
        return max(1, patch // 4)

    def check(self, predictors: Mapping[str, "Predictor"], windowed: frozenset[str],
              coarse: bool) -> None:
        """Every branch must be able to run densely."""
        for predictor in predictors.values():
            predictor.dense_halo()  # raises for a branch that cannot run densely


#: The mapping modes by name (the ``mode`` setting's choices, the default first).
MODES: dict[str, type[MappingMode]] = {mode.name: mode for mode in
                                       (Auto, Pixel, Windows, Dense)}


def mapping_mode(name: str) -> MappingMode:
    """The mode called ``name``.

    Raises:
        SettingsError: ``name`` is no mode of :data:`MODES` (as the ``mode`` setting says).
    """
    if not isinstance(name, str) or name not in MODES:
        raise SettingsError("mode", "expected one of " + ", ".join(map(repr, MODES))
                            + f", got {name!r}")
    return MODES[name]()

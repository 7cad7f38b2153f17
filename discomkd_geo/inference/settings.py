"""How a map is made: one frozen, validated settings object for the inference engine.

:class:`MapSettings` groups every mapping setting by what it governs: :class:`Tiling`
(which windows are classified and how the work is cut), :class:`Execution` (where it
runs), :class:`Outputs` (what is written besides the map) and :class:`Checks` (what the
input checks may let through). :func:`~discomkd_geo.inference.engine.predict_to_file`,
:func:`~discomkd_geo.inference.engine.predict_lazy` and
:func:`~discomkd_geo.inference.engine.make_plan` take it; the ``predict`` command's
options are generated from these dataclasses (:func:`setting_fields`), so the command
line and the Python API cannot drift apart.

Each setting is declared once, as a dataclass field made by :func:`setting`: its default,
its help text (the ``--help`` line and this reference), and its bounds. Values are
checked in ``__post_init__`` against the field's type (``Literal`` choices, ``int``,
``float``, ``bool``, paths, ``None`` where allowed) and bounds; a bad value raises
:class:`~discomkd_geo.errors.SettingsError` whose ``param`` is the field's name. Field
names are unique across groups, so ``MapSettings.of(stride=8, workers=2)`` sets them
flat.

Adding a mapping setting is a one-place change:

1. Add a field to the group it belongs to, e.g. in :class:`Tiling`::

       nodata_share: float = setting(0.9, "Refuse scenes with more nodata than this.",
                                     minimum=0.0, maximum=1.0)

   (a new group is a frozen dataclass deriving from :class:`_Group`, added as a field of
   :class:`MapSettings` with ``field(default_factory=...)``).
2. Read it where it acts (``settings.tiling.nodata_share``). The ``predict`` command gets
   ``--nodata-share`` with this help, default and range; ``cli=False`` keeps a setting
   Python-only, ``flag="--other-name"`` names its option otherwise, ``metavar=`` names
   its value.

What describes one modality's scene (band names, units, scale, ``nodata``) is not a
mapping setting: it is a field of :class:`~discomkd_geo.inference.io.SceneInput`, with
its own ``predict``/``inspect`` option in ``cli.py``. This module imports nothing heavy:
``discomkd-geo --help`` reads it.
"""

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import SettingsError
from .modes import MODES, Auto

#: A mapping mode's name: one of :data:`.modes.MODES` (one class each).
Mode = Literal[tuple(MODES)]
#: How windows beyond the scene edge are filled.
PadMode = Literal["reflect", "constant"]
#: How probability and confidence rasters store values.
ProbabilityDtype = Literal["float32", "uint8"]
#: How a map combines its modalities at each pixel (:mod:`.fusion`, one class each).
FusionName = Literal["product", "weighted", "confident", "average"]
#: An output path.
PathLike = str | os.PathLike[str]
#: Mode pixel's smoothing strength for one modality's map (chosen on validation scenes:
#: docs/tutorials/04-pixel-size.md).
SMOOTHING = 8.0


#: ``0.5ha``, ``5000m2``, ``5000`` (square metres), ``2km2``.
_AREA = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*(ha|m2|km2)?\s*", re.IGNORECASE)
_AREA_UNITS = {"ha": 10_000.0, "m2": 1.0, "km2": 1e6}


def parse_area(text: str) -> float:
    """An area such as ``0.5ha``, ``5000m2``, ``2km2`` or ``5000`` (m2) in square metres.

    Raises:
        ValueError: not a non-negative number with an optional unit ha, m2 or km2.
    """
    match = _AREA.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an area; write e.g. 0.5ha, 5000m2 or 5000 (m2)")
    return float(match.group(1)) * _AREA_UNITS[(match.group(2) or "m2").lower()]


def setting(default: Any, help: str, *, minimum: float | None = None,
            maximum: float | None = None, exclusive_minimum: bool = False,
            metavar: str | None = None, flag: str | None = None, cli: bool = True) -> Any:
    """A settings field: its default, help text and bounds, declared once.

    Args:
        default: the value when none is given (immutable).
        help: one or two sentences; the ``--help`` text of the generated option.
        minimum: smallest allowed value (numbers).
        maximum: largest allowed value (numbers).
        exclusive_minimum: whether ``minimum`` itself is excluded.
        metavar: the option value's name in ``--help``.
        flag: the option's name (default: ``--`` and the field name with dashes).
        cli: whether the ``predict`` command gets an option for it.
    """
    return field(default=default, metadata={
        "help": help, "minimum": minimum, "maximum": maximum,
        "exclusive_minimum": exclusive_minimum, "metavar": metavar, "flag": flag, "cli": cli})


@dataclass(frozen=True)
class SettingField:
    """One mapping setting, as :func:`setting_fields` describes it.

    Attributes:
        group: the :class:`MapSettings` field holding it (``tiling``, ...).
        name: the field's name (unique across groups).
        type: its type annotation.
        default: its default value.
        help: its help text.
        minimum: smallest allowed value, if bounded.
        maximum: largest allowed value, if bounded.
        exclusive_minimum: whether ``minimum`` itself is excluded.
        metavar: the option value's name, if not derived from the type.
        flag: the command-line option (``--chunk-size``); ``None``: Python only.
    """

    group: str
    name: str
    type: Any
    default: Any
    help: str
    minimum: float | None
    maximum: float | None
    exclusive_minimum: bool
    metavar: str | None
    flag: str | None


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the types settings use)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _describe(tp: Any) -> str:
    """``tp`` in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args:
        return " or ".join(_describe(a) for a in args)
    return {type(None): "None", os.PathLike: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds_problem(value: float, meta: Mapping[str, Any]) -> str | None:
    low, high = meta["minimum"], meta["maximum"]
    if low is not None and (value < low or (meta["exclusive_minimum"] and value == low)):
        return f"must be {'above' if meta['exclusive_minimum'] else 'at least'} {low:g}"
    if high is not None and value > high:
        return f"must be at most {high:g}"
    return None


@dataclass(frozen=True)
class _Group:
    """Base of the settings groups: checks every field against its type and bounds."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                raise SettingsError(f.name, f"expected {_describe(hints[f.name])}, "
                                            f"got {value!r}")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and (problem := _bounds_problem(value, f.metadata)):
                raise SettingsError(f.name, f"{problem}, got {value!r}")


@dataclass(frozen=True)
class Tiling(_Group):
    """Which windows are classified, and how the map is cut into work."""

    mode: Mode = setting(
        Auto.name, "; ".join(f"{name}: {mode.help}" for name, mode in MODES.items()) + ".")
    stride: int | None = setting(
        None, "Window step in input pixels [patch size / 4 dense, / 2 windows].", minimum=1)
    coarse: bool = setting(False, "One output pixel per stride cell.")
    pad: PadMode = setting(
        "reflect", "How windows beyond the scene edge are filled: mirrored (reflect) or "
        "with each band's typical training value (constant).")
    smoothing: float | None = setting(
        None, "Mode pixel: strength of the mean-field smoothing of the class probabilities "
        "(a Potts model: a pixel takes the class most of its neighbourhood holds unless its "
        "own evidence is strong; parcels lose their blotches, boundaries stay); 0: off. "
        "Probability and confidence rasters hold the smoothed values; several modalities' "
        f"are smoothed once fused. [default: {SMOOTHING:g}; off without PyTorch, whose code "
        "it is]",
        minimum=0.0)
    smoothing_radius: int = setting(
        32, "Mode pixel: half-side in pixels of the smoothing's neighbourhood (features "
        "narrower than it with weak evidence can be absorbed).", minimum=1)
    smoothing_passes: int = setting(
        3, "Mode pixel: mean-field passes of the smoothing (each adds the radius to the "
        "neighbouring probabilities a block's smoothing uses; the model still runs once "
        "per pixel).", minimum=1)
    min_valid: float = setting(
        0.5, "Windows with a smaller share of valid pixels are not classified (nodata).",
        minimum=0.0, maximum=1.0)
    chunk_size: int = setting(
        1024, "Side of the chunks of output pixels each task maps (bounds memory).",
        minimum=1)
    block_size: int = setting(
        1024, "Block side in pixels of modes dense (rounded to whole strides) and pixel "
        "(whole patches): the map depends on it, not on the chunk size or the number of "
        "workers.", minimum=1)
    batch_size: int = setting(
        32, "Windows per forward pass (windows mode; batches are always full).", minimum=1)
    aoi: str | None = setting(
        None, "Map only inside the polygons of this vector file (any format and CRS "
        "geopandas reads; FILE:LAYER names a layer): pixels whose centre lies outside are "
        "nodata, and chunks away from it are neither read nor classified.",
        metavar="FILE[:LAYER]")

    def __post_init__(self) -> None:
        # A str, not a Path: GDAL paths (/vsicurl/https://...) must keep their "//".
        if isinstance(self.aoi, os.PathLike):
            object.__setattr__(self, "aoi", os.fspath(self.aoi))
        super().__post_init__()


@dataclass(frozen=True)
class Execution(_Group):
    """Where and how the chunks run."""

    workers: int = setting(1, "Local worker threads (without a scheduler).", minimum=1)
    scheduler: str | None = setting(
        None, "dask.distributed scheduler to run on, e.g. tcp://10.0.0.5:8786.",
        metavar="ADDRESS")
    scheduler_timeout: float = setting(
        10.0, "Seconds to wait for the scheduler to answer.", minimum=0.0,
        exclusive_minimum=True)
    device: str | None = setting(
        None, "torch device the models run on, e.g. cpu or cuda:1 [default: cuda when "
        "available, else cpu].", metavar="DEVICE")
    threads: int | None = setting(
        None, "torch threads per local worker [default: torch's thread count divided by the "
        "number of workers].", minimum=1)


@dataclass(frozen=True)
class Outputs(_Group):
    """What is written besides the map (its style, legend and STAC Item always are)."""

    probabilities: PathLike | None = setting(
        None, "Also write per-class probabilities (one band per class) here.", metavar="FILE")
    probabilities_dtype: ProbabilityDtype = setting(
        "float32", "How the probability and confidence rasters store values: float32 "
        "(nodata NaN) or uint8 (p x 250, nodata 255).")
    confidence: bool | PathLike = setting(
        False, "Also write the winning probability to OUTPUT_STEM.confidence.tif (in Python "
        "also a path).")
    vector: PathLike | None = setting(
        None, "Also write the map's polygons to this GeoPackage: one feature per connected "
        "region with class code, name, colour and area (m2, ha; on an equal-area projection "
        "for geographic CRSs), and a QGIS style VECTOR_STEM.qml.", metavar="FILE")
    mmu: float | str | None = setting(
        None, "Minimum mapping unit of the polygons: smaller regions are first merged into "
        "their largest mapped neighbour, e.g. 0.5ha, 5000m2 or 5000 (m2).", minimum=0.0,
        metavar="AREA")
    source: PathLike | None = setting(
        None, "Also write which evidence decided each pixel here: a uint8 raster with a "
        "colour table, 0 none, 1 MS, 2 SAR, 3 fused (255: outside the area of interest).",
        metavar="FILE")
    overwrite: bool = setting(False, "Replace existing outputs.")

    def __post_init__(self) -> None:
        if isinstance(self.mmu, str):  # "0.5ha" -> 5000.0 (m2)
            try:
                object.__setattr__(self, "mmu", parse_area(self.mmu))
            except ValueError as err:
                raise SettingsError("mmu", str(err)) from err
        super().__post_init__()
        if self.mmu is not None and self.vector is None:
            raise SettingsError("mmu", "applies to the polygons: give a vector output too "
                                       "(vector=FILE)")


@dataclass(frozen=True)
class Fusion(_Group):
    """How several modalities make one map (one modality's map is that branch's)."""

    fusion: FusionName = setting(
        "product",
        "Where several modalities are valid, how their class probabilities combine: "
        "product (naive Bayes, chosen on validation scenes), weighted (product, each branch "
        "weighted by its --branch-accuracy), confident (the branch with the higher winning "
        "probability) or average. Elsewhere the one valid branch decides.")
    branch_accuracy: str | None = setting(
        None, "Fusion weighted: each branch's measured accuracy, e.g. ms=0.86,sar=0.81.",
        metavar="MODALITY=OA,...")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.branch_accuracy is not None:
            from .fusion import parse_accuracy

            try:
                parse_accuracy(self.branch_accuracy)
            except ValueError as err:
                raise SettingsError("branch_accuracy", str(err)) from err


@dataclass(frozen=True)
class Checks(_Group):
    """What the input checks let through."""

    force: bool = setting(
        False, "Map scenes whose values look like other units, scale or band order than the "
        "training data (the summary keeps the check's figures).")


@dataclass(frozen=True)
class MapSettings:
    """Every setting of a map, grouped; frozen and checked when made.

    ``MapSettings()`` holds the defaults; ``MapSettings.of(stride=8, workers=2)`` or
    ``settings.replace(mode="dense")`` set fields by name, whatever their group.

    Attributes:
        tiling: which windows are classified, and how the work is cut.
        execution: where and how the chunks run.
        outputs: what is written besides the map.
        fusing: how several modalities make one map.
        checks: what the input checks let through.
    """

    tiling: Tiling = field(default_factory=Tiling)
    execution: Execution = field(default_factory=Execution)
    outputs: Outputs = field(default_factory=Outputs)
    fusing: Fusion = field(default_factory=Fusion)
    checks: Checks = field(default_factory=Checks)

    #: Field name -> the group holding it (filled below the class).
    groups: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(MapSettings)
        for f in dataclasses.fields(self):
            if not isinstance(getattr(self, f.name), hints[f.name]):
                raise SettingsError(f.name, f"expected a {hints[f.name].__name__}, "
                                            f"got {getattr(self, f.name)!r}")

    @classmethod
    def of(cls, **values: Any) -> "MapSettings":
        """The defaults with ``values`` (field names of any group) set."""
        return cls().replace(**values)

    def replace(self, **values: Any) -> "MapSettings":
        """A copy with ``values`` (field names of any group) set.

        Raises:
            SettingsError: an unknown name, or a value its field refuses.
        """
        changes: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if name not in self.groups:
                raise SettingsError(name, "is not a mapping setting; known: "
                                          + ", ".join(sorted(self.groups)))
            changes.setdefault(self.groups[name], {})[name] = value
        return dataclasses.replace(self, **{
            group: dataclasses.replace(getattr(self, group), **fields)
            for group, fields in changes.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The settings as ``{group: {field: value}}`` (paths as strings)."""
        return {group: {name: os.fspath(v) if isinstance(v, os.PathLike) else v
                        for name, v in dataclasses.asdict(getattr(self, group)).items()}
                for group in (f.name for f in dataclasses.fields(self))}


def setting_fields() -> list[SettingField]:
    """Every mapping setting, group by group in declaration order."""
    rows = []
    for group in dataclasses.fields(MapSettings):
        cls = typing.get_type_hints(MapSettings)[group.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            flag = (meta["flag"] or f"--{f.name.replace('_', '-')}") if meta["cli"] else None
            rows.append(SettingField(group.name, f.name, hints[f.name], f.default, meta["help"],
                                     meta["minimum"], meta["maximum"],
                                     meta["exclusive_minimum"], meta["metavar"], flag))
    return rows


def _index() -> dict[str, str]:
    groups: dict[str, str] = {}
    for f in setting_fields():
        if f.name in groups:  # flat names (MapSettings.of, error params) must be unambiguous
            raise TypeError(f"mapping setting {f.name!r} is in {groups[f.name]} and {f.group}")
        groups[f.name] = f.group
    return groups


MapSettings.groups.update(_index())
#: The default settings (a default argument value: the object is frozen).
DEFAULTS = MapSettings()

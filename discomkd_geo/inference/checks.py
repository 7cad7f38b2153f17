"""Does a scene hold what the model was trained on? Units, scale and band order, checked.

Called by the engine before any mapping (and by ``discomkd-geo inspect``). A sampled
statistics pass reads a regular grid of small windows of the scene and compares every
band's 2nd/50th/98th percentiles with those of the training data that the checkpoint
carries (:attr:`~discomkd_geo.data.normalization.BandStats.profile`).

The sample holds only available pixels: not nodata, not saturated, not masked
(:meth:`~discomkd_geo.inference.io._Reader.read_raw_windows`). What depends on the sensor
(how to measure distances, the usual storages, the values it can produce) is asked of its
profile (:mod:`discomkd_geo.data.sensors`).

Distances are measured in decades, the natural unit of unit mistakes: for SAR in dB,
10 dB is one decade of power; for reflectance (positive digital numbers), the log10 of
the ratio of medians. A scene is refused when its bands lie more than
:data:`UNIT_DECADES` from the training medians in the declared units (reflectance 0-1
given as digital numbers is 4 decades off; linear power read as dB about 1.5), or more
than :data:`SHIFT_DECADES` on average while another storage fits far better (amplitude
read as power is off by half its dB value). The raw values are matched against the other
usual storages (dB, linear power, amplitude; reflectance 0-1, x 10000, with or without
the baseline-04.00 offset) to name the likely fix. Band order is refused when two bands
ordered in the training data (medians clearly apart, bright ends, p98, in the same order:
NIR above red, VV above VH, ...) come in the opposite order in the scene at both. A
permutation moves whole distributions; what clouds leave of a scene (mostly water, say)
moves the medians of some bands below others but keeps its land's bright end in order.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from rasterio.windows import Window

from ..data.sensors import Sensor
from ..errors import InputFileError
from ..models.info import BranchPredictor as Predictor
from .io import SceneReader, Units
from .tiling import chunk_layout

#: A band whose median lies further than this from the training median (decades) is off.
UNIT_DECADES = 1.0
#: ... and a scene whose bands are on average further than this is refused.
SHIFT_DECADES = 0.5
#: ... or when they are off on average and another storage fits this many times better.
BETTER_FIT = 3.0
#: Band pairs whose training medians differ by at least this (decades) must keep their order.
ORDER_DECADES = 0.2
#: ... and are called permuted when the scene reverses their medians by at least this
#: (and their 98th percentiles by any amount).
REVERSED_DECADES = 0.1
#: Windows per side of the sample grid, and their size in pixels.
SAMPLE_WINDOWS, SAMPLE_SIZE = 8, 64
#: Chunk side of the full pass that confirms an empty-looking sample.
FULL_PASS_CHUNK = 1024
#: One value held by every band in at least this share of the sampled valid pixels is
#: taken for an untagged fill value (SNAP and Earth Engine exports fill outside the swath
#: with 0 in every band and do not always tag it as nodata).
FILL_SHARE = 0.05


@dataclass(frozen=True)
class Candidate:
    """A usual way of storing the values, and the parameter (Python spelling) that declares it."""

    label: str
    units: Units
    fix: str


@dataclass
class BandCheck:
    """One band's figures: scene and training percentiles in model units, and a verdict.

    Attributes:
        band: the model's band name.
        unit_guess: the storage of the raw values that best matches the training data.
        scene: scene p2, p50, p98 (in the predictor's units, as declared).
        training: training p2, p50, p98 (``None``: the checkpoint has none).
        decades: distance of the scene median from the training median.
        clipped: share of scene values outside the training [p2, p98].
        verdict: ``ok``, ``shifted``, ``units``, ``order`` or ``not checked``.
    """

    band: str
    unit_guess: str
    scene: tuple[float, float, float]
    training: tuple[float, float, float] | None
    decades: float | None
    clipped: float | None
    verdict: str


@dataclass
class SceneCheck:
    """The outcome of the statistics pass over one modality's scene.

    Attributes:
        modality: the modality.
        source: the input, for messages.
        units: the declared conversion, in words.
        sampled_pixels: pixels read.
        valid_share: share of them valid in every band.
        bands: per-band figures.
        problems: reasons to refuse the scene, each one line without the file name
            (empty: it looks right).
        forced: mapped although there were problems.
    """

    modality: str
    source: str
    units: str
    sampled_pixels: int
    valid_share: float
    bands: list[BandCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for the run summary)."""
        return asdict(self)


def sample_windows(height: int, width: int, per_side: int = SAMPLE_WINDOWS,
                   size: int = SAMPLE_SIZE) -> list[Window]:
    """A regular grid of ``per_side`` x ``per_side`` windows spread over the scene.

    Along a side shorter than ``per_side`` windows, the windows tile it instead, the last
    one cut at the edge: spread windows would overlap there, counting pixels twice.
    """
    def spans(extent: int) -> list[tuple[int, int]]:
        if per_side * size >= extent:
            return [(start, min(size, extent - start)) for start in range(0, extent, size)]
        return [(int(v), size) for v in np.linspace(0, extent - size, per_side)]

    return [Window(col, row, w, h) for row, h in spans(height) for col, w in spans(width)]


def _sample(reader: SceneReader, region: Window | None = None) -> tuple[np.ndarray, int]:
    """Raw values ``(C, N)`` of the valid pixels of a sample, and the pixels read.

    The sample is spread over ``region`` (default: the whole grid; an area of interest's
    window, so that nothing outside it is read). When the sample holds no valid pixel,
    the whole region is read chunk by chunk before it is called empty: a small valid area
    must not be missed.
    """
    area = region or reader.grid.window
    for windows in (sample_windows(area.height, area.width),
                    chunk_layout(area.height, area.width, FULL_PASS_CHUNK)):
        read = 0  # of this pass only: the full pass replaces the sample
        values = []
        for data, valid in reader.read_raw_windows(
                Window(area.col_off + w.col_off, area.row_off + w.row_off, w.width, w.height)
                for w in windows):
            read += valid.size
            values.append(data[:, valid])
        found = np.concatenate(values, axis=1)
        if found.shape[1]:
            break
    return found, read


def _distance(scene: float, training: float, sensor: Sensor) -> float:
    """Decades between two medians (infinite when they cannot be compared)."""
    decades = abs(sensor.decades(scene, training))
    return decades if math.isfinite(decades) else math.inf


def candidates(declared: Units, sensor: Sensor) -> list[Candidate]:
    """The usual storages of the sensor's values (:attr:`Sensor.storages`), the declared first.

    The declared one is named by its usual storage's words, else by its conversion.
    """
    usual = [Candidate(s.words, replace(declared, **s.declares), s.fix)
             for s in sensor.storages]
    label = next((c.label for c in usual if c.units == declared), declared.describe())
    return [Candidate(label, declared, "")] + [c for c in usual if c.units != declared]


def _medians(raw: np.ndarray, candidate: Candidate) -> np.ndarray:
    """Per-band medians of the raw sample under a candidate storage (NaN if unusable)."""
    data, valid = candidate.units.apply(raw, np.ones(raw.shape[1], dtype=bool))
    if valid.mean() < 0.5:  # mostly <= 0: cannot be power or amplitude
        return np.full(raw.shape[0], np.nan)
    return np.median(data[:, valid], axis=1)


def check_scene(predictor: Predictor, reader: SceneReader, modality: str,
                region: Window | None = None) -> SceneCheck:
    """Compare a scene's bands with the training data of ``predictor`` (no exception).

    Args:
        predictor: the model the scene is for; its statistics carry the training profile.
        reader: the scene, as :func:`~discomkd_geo.inference.io.open_readers` opened it.
        modality: the modality the scene is for.
        region: the part of the grid to sample (an area of interest's window).

    Returns:
        The figures and the problems found; an all-nodata scene is a problem whatever the
        checkpoint holds.
    """
    raw, read = _sample(reader, region)
    check = SceneCheck(modality, reader.name, reader.units.describe(), read,
                       raw.shape[1] / max(read, 1))
    if raw.shape[1] == 0:
        where = "" if region is None else " in the area of interest"
        check.problems.append(f"holds no valid pixel{where} (every pixel is nodata, "
                              "saturated or masked, or not finite in some band); nothing "
                              "to map")
        return check
    if problem := _fill_problem(raw):
        check.problems.append(problem)
    bands = predictor.info.bands
    converted, valid = reader.units.apply(raw, np.ones(raw.shape[1], dtype=bool))
    # Checked whatever the checkpoint holds, and reported after the units check: values
    # out of range because of a wrong scale are better named by their units.
    sensor = predictor.info.sensor
    impossible = impossible_problem(converted, valid, sensor, reader.units, bands,
                                    "of the sample")
    scene = np.percentile(converted[:, valid], [2, 50, 98], axis=1).T if valid.any() else (
        np.full((len(bands), 3), np.nan))
    profile = predictor.stats.profile
    if profile is None:
        check.bands = [BandCheck(b, "", tuple(map(float, s)), None, None, None, "not checked")
                       for b, s in zip(bands, scene, strict=True)]
        check.problems.extend([impossible] if impossible else [])
        return check
    training = np.array([profile["p2"], profile["p50"], profile["p98"]]).T
    options = candidates(reader.units, sensor)
    fits = np.array([[_distance(m, t, sensor) if np.isfinite(m) else math.inf
                      for m, t in zip(_medians(raw, c), training[:, 1], strict=True)]
                     for c in options])
    declared = fits[0]
    inside = (converted >= training[:, :1]) & (converted <= training[:, 2:])
    clipped = 1.0 - inside[:, valid].mean(axis=1) if valid.any() else np.ones(len(bands))
    # The declared storage unless it is off and another fits better.
    guesses = [options[0 if fits[0, i] <= SHIFT_DECADES else int(np.argmin(fits[:, i]))].label
               for i in range(len(bands))]
    verdicts = ["ok" if d <= SHIFT_DECADES else "shifted" for d in declared]
    worst = int(np.argmax(declared))
    means = fits.mean(axis=1)
    far = declared[worst] > UNIT_DECADES and (means[0] > SHIFT_DECADES
                                              or declared[worst] > 2 * UNIT_DECADES)
    # Off, and another storage fits far better (amplitude read as power: half the dB).
    beaten = means[0] > SHIFT_DECADES and means[1:].min() < means[0] / BETTER_FIT
    if far or beaten:
        verdicts = ["units" if d > SHIFT_DECADES else v for d, v in zip(declared, verdicts,
                                                                        strict=True)]
        check.problems.append(_units_problem(bands[worst], scene[worst, 1],
                                             training[worst, 1], declared[worst], options,
                                             fits))
    else:
        for problem, pair in _order_problems(bands, scene, training, sensor):
            check.problems.append(problem)
            for i in pair:
                verdicts[i] = "order"
    check.bands = [BandCheck(b, g, tuple(map(float, s)), tuple(map(float, t)), float(d),
                             float(c), v)
                   for b, g, s, t, d, c, v in zip(bands, guesses, scene, training, declared,
                                                  clipped, verdicts, strict=True)]
    check.problems.extend([impossible] if impossible else [])
    return check


def _fill_problem(raw: np.ndarray) -> str | None:
    """The refusal of a scene with an untagged fill value, or ``None``.

    A fill value is one constant held by every band over a large area. Needs two bands
    or more: a single band holding one value over an area can be real.
    """
    if raw.shape[0] < 2:
        return None
    same = (raw == raw[:1]).all(axis=0)
    if not same.any():
        return None
    values, counts = np.unique(raw[0, same], return_counts=True)
    share = counts.max() / raw.shape[1]
    if share < FILL_SHARE:
        return None
    value = float(values[counts.argmax()])
    return (f"{share:.0%} of the sampled valid pixels hold {value:g} in every band, which "
            "looks like a fill value not tagged as nodata (SNAP and Earth Engine exports "
            f"fill outside the swath so); if it marks missing pixels, pass nodata={value:g} "
            "(or force=True to map anyway)")


def impossible_problem(data: np.ndarray, valid: np.ndarray, sensor: Sensor, storage: Units,
                       bands: Sequence[str], where: str) -> str | None:
    """The refusal of values no sensor produces among the valid pixels, or ``None``.

    Any share is refused: a fill block too small for :func:`_fill_problem` (or in one
    band only) would otherwise be mapped as land.

    Args:
        data: ``(C, ...)`` values in the predictor's units (``storage`` applied).
        valid: which pixels hold a value in every band.
        sensor: the predictor's sensor; what it can produce
            (:attr:`~discomkd_geo.data.sensors.Sensor.possible`) is checked.
        storage: the conversion that was applied: the message names the value as stored,
            which is what ``nodata=`` compares.
        bands: the band names, in order.
        where: where they were found, for the message (``in rows 10-20``).
    """
    low, high = sensor.possible
    values = data[:, valid]
    out = (values < low) | (values > high)
    if not out.any():
        return None
    band = int(out.sum(axis=1).argmax())
    found, counts = np.unique(values[band, out[band]], return_counts=True)
    value = storage.stored(float(found[counts.argmax()]))
    return (f"{int(out.any(axis=0).sum()):,} pixels {where} hold values that no "
            f"{sensor.possible_words} can be, most often {value:g} (band {bands[band]}); if "
            f"it marks missing pixels, pass nodata={value:g} (or force=True to map anyway)")


def _units_problem(band: str, median: float, training: float, decades: float,
                   options: Sequence[Candidate], fits: np.ndarray) -> str:
    """The one-line refusal of a scene in other units, naming the likely fix."""
    direction = "below" if median < training or not np.isfinite(median) else "above"
    mean = fits.mean(axis=1)
    best = int(np.argmin(mean[1:])) + 1
    if mean[best] <= SHIFT_DECADES:
        advice = (f"it looks like {options[best].label}: pass {options[best].fix} "
                  "(or force=True to map anyway)")
    else:
        advice = (f"no usual storage fits ({', '.join(c.label for c in options)}); "
                  "uncalibrated digital numbers? calibrate the product first (or force=True)")
    if not np.isfinite(median):
        return (f"band {band} holds mostly values <= 0, which cannot be {options[0].label}; "
                f"{advice}")
    if not math.isfinite(decades):
        return (f"band {band} median {median:.4g} is not positive like the training median "
                f"{training:.4g} ({options[0].label}); {advice}")
    return (f"band {band} median {median:.4g} is {decades:.1f} decades {direction} the "
            f"training median {training:.4g} ({options[0].label}); {advice}")


def _gap(high: float, low: float, sensor: Sensor) -> float:
    """Signed decades by which ``high`` exceeds ``low`` (0 when not comparable)."""
    decades = sensor.decades(high, low)
    return decades if math.isfinite(decades) else 0.0


def _order_problems(bands: Sequence[str], scene: np.ndarray, training: np.ndarray,
                    sensor: Sensor) -> list[tuple[str, tuple[int, int]]]:
    """Band pairs ordered in training (e.g. B08 > B04) but reversed in the scene.

    Args:
        bands: the band names.
        scene: the scene's p2, p50, p98 per band, ``(C, 3)``.
        training: the training data's, ``(C, 3)``.
        sensor: the sensor, which says how far apart two values are.

    A pair is ordered in training when its medians are :data:`ORDER_DECADES` apart and its
    98th percentiles in the same order; it is reversed in the scene when the medians are
    :data:`REVERSED_DECADES` apart the other way and the 98th percentiles too (or tied).
    A median alone follows the scene's mix of land covers: under 75% cloud, the clear rest
    of a synthetic scene, half of it sea, had its B06 (red edge) median below B01's
    (aerosol), as water has, while its land kept B06 above B01 at the bright end.
    """
    def apart(values: np.ndarray, high: int, low: int) -> tuple[float, float]:
        """Decades by which band ``high`` exceeds band ``low`` at the median and at p98."""
        return (_gap(values[high, 1], values[low, 1], sensor),
                _gap(values[high, 2], values[low, 2], sensor))

    problems = []
    for i in range(len(bands)):
        for j in range(len(bands)):
            median, bright = apart(training, i, j)
            if median < ORDER_DECADES or bright <= 0:
                continue
            median, bright = apart(scene, j, i)
            if median >= REVERSED_DECADES and bright >= 0:
                problems.append((
                    f"band order looks permuted: {bands[i]} (median {scene[i, 1]:.4g}) "
                    f"lies below {bands[j]} ({scene[j, 1]:.4g}) while the training data has "
                    f"{bands[i]} above {bands[j]}; check the band names or pass bands= in "
                    "raster order (or force=True to map anyway)", (i, j)))
    return problems[:1]  # the first reversed pair says it; more would repeat it


def check_scenes(predictors: Mapping[str, Predictor], readers: Mapping[str, SceneReader], *,
                 force: bool = False, region: Window | None = None) -> dict[str, SceneCheck]:
    """Check every modality's scene; refuse the first problem unless ``force``.

    ``region`` (an area of interest's window on the grid) limits where scenes are sampled.

    An all-nodata scene is refused even with ``force``: there is nothing to map.

    Raises:
        InputFileError: a scene is empty, in other units or scale, or its bands permuted.
    """
    checks = {}
    for modality, reader in readers.items():
        check = check_scene(predictors[modality], reader, modality, region)
        if check.problems and (not force or check.valid_share == 0.0):
            raise InputFileError(reader.name, check.problems[0])
        check.forced = bool(check.problems)
        checks[modality] = check
    return checks

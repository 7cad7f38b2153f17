"""One profile per sensor: what a modality's raw values are, asked instead of a units string.

A model branch reads one sensor's values in that sensor's units, and much follows from the
sensor alone: its bands, the values it can produce, the codes its products reserve, the
histogram its training statistics are read from, how files usually store its values and
how those convert, which masks apply to its scenes and how its rasters are resampled.
Each sensor is one small class (:class:`Sentinel2MSI`, :class:`Sentinel1SAR`) with one
instance per modality in :data:`SENSORS`, the registry every layer asks (the pattern of
TorchGeo's weights enums and xarray's backend entrypoints: one registry, asked by key).
Checkpoints and ONNX exports keep storing the name of the units (``dn``, ``dB``:
:attr:`Sensor.units`) in their :class:`~discomkd_geo.models.info.PredictorInfo`, whose
:attr:`~discomkd_geo.models.info.PredictorInfo.sensor` is the profile.

Light on purpose (no numpy): the command line takes its mask kinds and SAR storages from
here without slowing ``--help``.

Sources: ESA, Sentinel-2 Products Specification Document (S2-PDGS-TAS-DI-PSD): digital
numbers are reflectance x 10000 (``QUANTIFICATION_VALUE``), the special values NODATA = 0
and SATURATED = 65535, and from processing baseline 04.00 an offset of +1000
(``RADIO_ADD_OFFSET``); ESA, Sentinel-1 Product Specification: a Level-1 ``.SAFE`` holds
uncalibrated digital numbers in radar geometry; ASF HyP3 RTC product guide: the file name
states the scale, power, amplitude or decibel.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..constants import MS, S1_BANDS, S2_BANDS, SAR

#: How a SAR input stores backscatter: dB, linear power (sigma0/gamma0) or amplitude.
SarUnits = Literal["db", "linear", "amplitude"]


@dataclass(frozen=True)
class Storage:
    """A usual way files store a sensor's values, which the units check tries.

    Attributes:
        words: what messages call it.
        fix: the parameters that declare it (Python spelling), named in refusals.
        declares: the :class:`~discomkd_geo.inference.io.Units` fields that declare it.
    """

    words: str
    fix: str
    declares: Mapping[str, Any]


@dataclass(frozen=True)
class SarScale:
    """How a SAR file stores backscatter, and how that becomes dB.

    Attributes:
        name: its ``sar_units`` spelling.
        words: what messages call it.
        db_per_decade: dB = this x log10(value): 10 for power, 20 for amplitude (the
            square root of power); ``None``: stored in dB already.
        hyp3: the scale letter of ASF HyP3 RTC file names that states it.
    """

    name: SarUnits
    words: str
    db_per_decade: float | None
    hyp3: str

    @property
    def conversion(self) -> str:
        """The conversion in words, e.g. ``linear power -> dB``."""
        return self.words if self.db_per_decade is None else f"{self.words} -> dB"


class Sensor:
    """What one sensor's raw values are; one subclass per sensor, one instance in SENSORS."""

    #: The modality whose models read it (its key in :data:`SENSORS`).
    modality: ClassVar[str]
    #: What messages call it.
    title: ClassVar[str]
    #: Its bands, in the order of the EuroSAT GeoTIFFs.
    bands: ClassVar[tuple[str, ...]]
    #: The name of its units as checkpoints and exports store it (``PredictorInfo.units``).
    units: ClassVar[str]
    #: Whether its units are decibels: a gain is an added constant, 10 dB a decade of power.
    decibels: ClassVar[bool]
    #: What it can produce, in its units: outside is a fill value or a conversion gone wrong.
    possible: ClassVar[tuple[float, float]]
    #: ... in words, for the refusal.
    possible_words: ClassVar[str]
    #: The value its products give pixels without data (the training scenes' nodata).
    nodata: ClassVar[float]
    #: The stored value its products give saturated pixels (``None``: none); such a pixel
    #: holds no measurement and is unavailable, like nodata.
    saturated: ClassVar[float | None] = None
    #: Histogram bins ``(low, high, count)`` the training statistics are read from.
    histogram: ClassVar[tuple[float, float, int]]
    #: The ways of storing SAR backscatter that convert to its units (``sar_units``).
    sar_scales: ClassVar[tuple[SarScale, ...]] = ()
    #: The usual ways files store its values, the model's own first.
    storages: ClassVar[tuple[Storage, ...]]
    #: The kinds of mask file (``inference.masks.MASK_KINDS``) its scenes take.
    mask_files: ClassVar[tuple[str, ...]]
    #: The mask kind that detects clouds on the scene itself (``mask="auto"``), if any.
    mask_detector: ClassVar[str | None] = None
    #: How its rasters are resampled when warped onto the map's grid (rasterio's name).
    resampling: ClassVar[str]
    #: Why one of its ``.SAFE`` products is refused (``None``: such products are read).
    safe_problem: ClassVar[str | None] = None

    def decades(self, value: float, reference: float) -> float:
        """Signed decades by which ``value`` exceeds ``reference`` (NaN: not comparable).

        Decades are the natural unit of unit mistakes: in dB, 10 dB is one decade of
        power; for positive quantities, the log10 of the ratio.
        """
        if self.decibels:
            return (value - reference) / 10.0
        if value <= 0 or reference <= 0:
            return math.nan
        return math.log10(value / reference)

    def unsaturated(self, data: Any, valid: Any) -> Any:
        """``valid`` less the saturated pixels of ``(C, H, W)`` stored values.

        A pixel where a band holds :attr:`saturated` has no measurement, like nodata. The
        code is a stored value (Sentinel-2's 65535 whatever the product's offset), so it is
        compared before any conversion of units. Arrays in, arrays out: this module imports
        no numpy.
        """
        if self.saturated is None:
            return valid
        return valid & (data != self.saturated).all(axis=0)

    def sar_units(self, asked: SarUnits | None, files: Sequence[str]) -> SarUnits | None:
        """How ``files`` store SAR backscatter (``None``: the sensor is not SAR).

        Args:
            asked: the ``sar_units`` given (``None``: not given).
            files: the input's file names (none for an array).
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled (on a Dask worker) as the registry's own instance, not a copy.
        return sensor_of, (self.modality,)


class Sentinel2MSI(Sensor):
    """Sentinel-2 MSI: Level-1C digital numbers (top-of-atmosphere reflectance x 10000).

    Warped bilinearly: reflectance varies smoothly between neighbours.
    """

    modality = MS
    title = "Sentinel-2 MSI"
    bands = S2_BANDS
    units = "dn"
    decibels = False
    # From the slight negatives of atmospheric correction to beyond bright clouds at low sun.
    possible = (-2000.0, 40000.0)
    possible_words = "reflectance (-0.2 to 4, x 10000)"
    nodata = 0.0
    saturated = 65535.0
    # uint16: one bin per integer DN, centred on it, so percentiles of integer data are
    # exact (the same as numpy.percentile).
    histogram = (-0.5, 65535.5, 65536)
    storages = (
        Storage("reflectance x 10000", "scale=1 and offset=0", {"scale": 1.0, "offset": 0.0}),
        Storage("reflectance 0-1", "scale=10000", {"scale": 1e4, "offset": 0.0}),
        Storage("reflectance x 10000 + 1000 (baseline 04.00)", "offset=-1000",
                {"scale": 1.0, "offset": -1000.0}),
    )
    mask_files = ("scl", "fmask", "binary")
    mask_detector = "s2cloudless"
    resampling = "bilinear"


class Sentinel1SAR(Sensor):
    """Sentinel-1 C-band SAR: calibrated, terrain-corrected backscatter in dB (VV, VH).

    Warped by nearest neighbour: the SAR branch classifies by the speckle texture, which
    interpolation averages away (bilinear onto the demo's MS grid: the SAR branch's OA fell
    from 0.86 to 0.36, mode pixel; docs/guide/per-pixel-fusion.md).
    """

    modality = SAR
    title = "Sentinel-1 SAR"
    bands = S1_BANDS
    units = "dB"
    decibels = True
    # From below any noise floor (about -30 dB) to beyond the brightest corner reflector.
    possible = (-100.0, 60.0)
    possible_words = "SAR backscatter (-100 to 60 dB)"
    nodata = math.nan
    # 0.01 dB bins over [-80, 40) dB, percentile error <= 0.005 dB; Sentinel-1 GRD
    # backscatter lies well inside.
    histogram = (-80.0, 40.0, 12000)
    sar_scales = (SarScale("db", "dB", None, "d"),
                  SarScale("linear", "linear power", 10.0, "p"),
                  SarScale("amplitude", "amplitude", 20.0, "a"))
    storages = tuple(Storage(s.words, f"sar_units={s.name!r}", {"sar": s.name})
                     for s in sar_scales)
    mask_files = ("binary",)
    resampling = "nearest"
    safe_problem = (
        "is a raw Sentinel-1 product (uncalibrated digital numbers in radar geometry); "
        "calibrate it to backscatter and terrain-correct it first: ESA SNAP (Calibration + "
        "Terrain-Correction), pyroSAR, ISCE or ASF HyP3 RTC, or download an RTC product "
        "(ASF HyP3, Planetary Computer sentinel-1-rtc); then pass the GeoTIFF(s)")

    #: ASF HyP3 RTC file names: ``..._RTC30_G_gpuned_...``; the 2nd letter after the
    #: product type is the scale (:attr:`SarScale.hyp3`).
    hyp3_name: ClassVar[re.Pattern[str]] = re.compile(
        rf"_RTC\d+_[A-Z]_[gs]([{''.join(s.hyp3 for s in sar_scales)}])[a-z]{{4}}_",
        re.IGNORECASE)

    def sar_units(self, asked: SarUnits | None, files: Sequence[str]) -> SarUnits:
        """The units asked for, else those ASF HyP3 RTC file names state, else dB."""
        if asked is not None:
            return asked
        stated = {s.name for f in files if (m := self.hyp3_name.search(Path(f).name))
                  for s in self.sar_scales if s.hyp3 == m.group(1).lower()}
        return stated.pop() if len(stated) == 1 else "db"


#: Every sensor's profile, by the modality whose models read it.
SENSORS: Mapping[str, Sensor] = {s.modality: s for s in (Sentinel2MSI(), Sentinel1SAR())}

#: The ways of storing SAR backscatter by their ``sar_units`` name.
SAR_SCALES: Mapping[str, SarScale] = {s.name: s for s in Sentinel1SAR.sar_scales}


def sensor_of(modality: str) -> Sensor:
    """The profile of the sensor that ``modality``'s models read.

    Raises:
        ValueError: no sensor is known for ``modality``.
    """
    try:
        return SENSORS[modality]
    except KeyError:
        raise ValueError(f"no sensor profile for modality {modality!r}; known: "
                         f"{', '.join(SENSORS)}") from None

"""Per-band normalisation: statistics, their JSON form, and the module that applies them.

The paper's preprocessing (Ienco & Fraga Dantas, 2024) clips each band to its 2nd-98th
percentile over the training set and rescales to [0, 1]; mean/std standardisation is the
alternative. :class:`BandStats` is what travels inside checkpoints, so inference
normalises exactly as training did.

The statistics come from one streaming pass over the training split
(:func:`compute_stats`), never the whole split in memory: :class:`RunningBandStats`
keeps per band a running count/mean/M2 (Chan et al.'s parallel update of Welford's
algorithm) and a fixed-bin histogram from which percentiles are read. Sits under the
DataModule (:mod:`discomkd_geo.data.datamodule`), which computes and caches the
statistics, and beside the predictor, which applies them at inference. The 2nd, 50th and
98th percentiles of every band travel with the statistics (:attr:`BandStats.profile`)
whatever the method, so inference can tell a scene in other units from the training data
(:mod:`discomkd_geo.inference.checks`).
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .bandstats import BandStats
from .sensors import sensor_of


class Normalize(nn.Module):
    """Apply :class:`BandStats` to images of shape ``(..., C, H, W)`` on any device."""

    def __init__(self, stats: BandStats) -> None:
        super().__init__()
        self.clip = stats.method == "percentile"
        # A constant band has zero spread: divide by 1 rather than by 0.
        scale = [s if s > 0 else 1.0 for s in stats.scale]
        self.register_buffer("shift", torch.tensor(stats.shift).view(-1, 1, 1))
        self.register_buffer("scale", torch.tensor(scale).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (cast to float32)."""
        y = (x.float() - self.shift) / self.scale
        return y.clamp(0.0, 1.0) if self.clip else y


@dataclass(frozen=True)
class HistogramBins:
    """Equal-width histogram bins over ``[low, high)``; values outside land in the end bins.

    A percentile read from the histogram is the centre of the bin holding the order
    statistic, so its error is at most half a bin width for values inside the range.

    Attributes:
        low: lower edge of the first bin.
        high: upper edge of the last bin.
        count: number of bins.
    """

    low: float
    high: float
    count: int

    @property
    def width(self) -> float:
        """Width of one bin."""
        return (self.high - self.low) / self.count

    def index(self, x: Tensor) -> Tensor:
        """Bin index (int64) of every value of ``x``, clamped into the range."""
        idx = torch.floor((x.double() - self.low) / self.width)
        return idx.clamp_(0, self.count - 1).long()

    def centre(self, idx: Tensor) -> Tensor:
        """Centre value (float64) of the bins ``idx``."""
        return self.low + (idx.double() + 0.5) * self.width


#: Percentiles of the training data recorded per band in :attr:`BandStats.profile`.
PROFILE_PERCENTILES: tuple[float, ...] = (2.0, 50.0, 98.0)


class RunningBandStats:
    """Per-band statistics accumulated batch by batch in constant memory.

    Mean and (population) standard deviation are exact in float64, merged with the
    parallel update of Chan, Golub & LeVeque (1979); percentiles come from a fixed-bin
    histogram (see :class:`HistogramBins` for the error). Non-finite values (NaN
    nodata) are ignored.

    Args:
        num_bands: number of channels of the images.
        bins: histogram bins, a sensor's
            (:attr:`~discomkd_geo.data.sensors.Sensor.histogram`).
    """

    def __init__(self, num_bands: int, bins: HistogramBins) -> None:
        self.num_bands = num_bands
        self.bins = bins
        self.count = torch.zeros(num_bands, dtype=torch.float64)
        self.mean = torch.zeros(num_bands, dtype=torch.float64)
        self.m2 = torch.zeros(num_bands, dtype=torch.float64)
        self.hist = torch.zeros(num_bands, bins.count, dtype=torch.int64)

    def update(self, images: Tensor) -> None:
        """Add images of shape ``(C, H, W)`` or ``(B, C, H, W)``.

        Raises:
            ValueError: the channel count differs from ``num_bands``.
        """
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != self.num_bands:
            raise ValueError(f"expected (B, {self.num_bands}, H, W) images, "
                             f"got shape {tuple(images.shape)}")
        x = images.detach().cpu().double().transpose(0, 1).reshape(self.num_bands, -1)
        finite = torch.isfinite(x)
        n_b = finite.sum(dim=1).double()
        x = torch.where(finite, x, torch.zeros((), dtype=x.dtype))
        mean_b = x.sum(dim=1) / n_b.clamp(min=1)
        m2_b = (((x - mean_b[:, None]) * finite) ** 2).sum(dim=1)
        n = self.count + n_b
        delta = mean_b - self.mean
        safe_n = n.clamp(min=1)
        self.mean += delta * n_b / safe_n
        self.m2 += m2_b + delta**2 * self.count * n_b / safe_n
        self.count = n
        # One bincount over all bands: offset each band's bin indices by band * count.
        idx = self.bins.index(x) + torch.arange(self.num_bands)[:, None] * self.bins.count
        self.hist += torch.bincount(idx[finite], minlength=self.hist.numel()).view_as(self.hist)

    @property
    def std(self) -> Tensor:
        """Population standard deviation per band (as ``numpy.std``)."""
        return (self.m2 / self.count.clamp(min=1)).sqrt()

    def percentile(self, q: float) -> Tensor:
        """Per-band ``q``-th percentile, interpolated like ``numpy.percentile``'s default.

        Raises:
            ValueError: ``q`` is outside [0, 100] or no value was seen.
        """
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        total = self.hist.sum(dim=1)
        if bool((total == 0).any()):
            raise ValueError("no finite value was accumulated for some band")
        # numpy's "linear" method: rank q/100 * (n - 1) between two order statistics.
        rank = q / 100.0 * (total - 1).double()
        below, above = rank.floor().long(), rank.ceil().long()
        cumulative = self.hist.cumsum(dim=1)
        v_below = self.bins.centre(torch.searchsorted(cumulative, below[:, None], right=True))
        v_above = self.bins.centre(torch.searchsorted(cumulative, above[:, None], right=True))
        return (v_below + (rank - below)[:, None] * (v_above - v_below)).squeeze(1)

    def to_band_stats(self, bands: Sequence[str], method: Literal["percentile", "meanstd"],
                      low: float = 2.0, high: float = 98.0) -> BandStats:
        """The :class:`BandStats` of ``method`` (``low``/``high`` percentiles if relevant).

        The statistics carry the :data:`PROFILE_PERCENTILES` of every band as well.

        Raises:
            ValueError: ``bands`` does not match the channel count.
        """
        if len(bands) != self.num_bands:
            raise ValueError(f"{len(bands)} band names for {self.num_bands} channels")
        if method == "percentile":
            lo, hi = self.percentile(low), self.percentile(high)
            shift, scale = lo, hi - lo
        else:
            shift, scale = self.mean, self.std
        profile = {f"p{q:g}": self.percentile(q).tolist() for q in PROFILE_PERCENTILES}
        return BandStats(method, list(bands), shift.tolist(), scale.tolist(), profile)


def _batches(data: "Dataset[dict[str, Any]] | DataLoader[dict[str, Any]]",
             max_samples: int | None, seed: int, batch_size: int,
             num_workers: int) -> Iterable[dict[str, Any]]:
    """Batches of ``data``; a dataset is read in a seeded random order when capped."""
    if isinstance(data, DataLoader):
        return data
    if max_samples is not None and max_samples < len(data):  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data), generator=generator)[:max_samples]  # type: ignore[arg-type]
        data = Subset(data, order.tolist())
    return DataLoader(data, batch_size=batch_size, num_workers=num_workers)


def compute_stats(data: "Dataset[dict[str, Any]] | DataLoader[dict[str, Any]]",
                  modality: str, bands: Sequence[str],
                  method: Literal["percentile", "meanstd"] = "percentile",
                  low: float = 2.0, high: float = 98.0, max_samples: int | None = None,
                  *, seed: int = 0, batch_size: int = 32,
                  num_workers: int = 0, progress: bool = True) -> BandStats:
    """Normalisation statistics of one modality in a single streaming pass.

    Only the running sums and one histogram per band are held in memory, whatever the
    size of the training split. Percentile clipping to [low, high] is the paper's
    preprocessing (Ienco & Fraga Dantas, 2024); ``meanstd`` standardises instead.

    Args:
        data: the training split: a dataset of samples with ``image_<modality>``
            (``(C, H, W)``), or a DataLoader of such batches.
        modality: modality name; images are read from ``image_<modality>``, and its
            sensor's histogram (:attr:`~discomkd_geo.data.sensors.Sensor.histogram`:
            exact percentiles of uint16 digital numbers, 0.01 dB bins for SAR) gives the
            percentiles.
        bands: band names of the channels, in order.
        method: ``percentile`` or ``meanstd``.
        low: lower percentile (``percentile`` only).
        high: upper percentile (``percentile`` only).
        max_samples: read at most this many images (a seeded random subset of a
            dataset, the first ones of a DataLoader); ``None`` reads all.
        seed: seed of the random subset when ``max_samples`` caps a dataset.
        batch_size: images per read when ``data`` is a dataset.
        num_workers: DataLoader workers when ``data`` is a dataset.
        progress: show a progress bar.

    Returns:
        The statistics, bands in the given order.

    Raises:
        ValueError: unknown ``modality`` or ``method``, or no image was read.
    """
    sensor = sensor_of(modality)
    if method not in ("percentile", "meanstd"):
        raise ValueError(f"method must be 'percentile' or 'meanstd', got {method!r}")
    key = f"image_{modality}"
    running = RunningBandStats(len(bands), HistogramBins(*sensor.histogram))
    limit = math.inf if max_samples is None else max_samples
    seen = 0
    with tqdm(total=None if max_samples is None else max_samples, unit="img",
              desc=f"{modality} statistics", disable=not progress, leave=False) as bar:
        for batch in _batches(data, max_samples, seed, batch_size, num_workers):
            images = batch[key]
            if images.dim() == 3:
                images = images.unsqueeze(0)
            images = images[: int(min(limit - seen, images.shape[0]))]
            running.update(images)
            seen += images.shape[0]
            bar.update(images.shape[0])
            if seen >= limit:
                break
    if seen == 0:
        raise ValueError(f"no {modality} image to compute statistics from")
    return running.to_band_stats(bands, method, low, high)

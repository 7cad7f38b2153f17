"""The sensor physics of the synthetic data: one surface, seen by Sentinel-2 and Sentinel-1.

Used by :mod:`discomkd_geo.data.synthetic`, which writes datasets and scenes from it.
:func:`land_surface` draws a class's surface, :func:`ms_digital_numbers` and
:func:`sar_sigma0`/:func:`sar_decibels` observe it, :func:`render_class` does all three.

Generative model. Both sensors observe **one per-sample surface** (:class:`Surface`), each
through its own physics and noise, so what one sensor sees of a sample tells something
about what the other sees of the *same* sample (not only of its class):

1. **Shared latent surface state**, drawn once per image (or scene region):

   * *material fractions* (crop, forest, water, asphalt, roofs, ...) with the class's
     spatial layout at a fixed pixel scale: field parcels and crop rows, forest crowns
     and gaps, road and river lines repeating every 56-80 px, housing blocks;
   * *soil moisture* (volumetric, 0.05-0.45 m3/m3): a patch mean set by recent weather
     (uniform 0.08-0.40), smooth spatial variation (drainage), and, on managed fields
     (annual and permanent crops), a per-parcel offset (irrigation, drainage), so parcel
     layout shows in the moisture field;
   * *surface roughness* (0-1 index of rms height): smooth, low on pasture and natural
     land, per parcel on managed fields (freshly ploughed vs rolled seedbed).

2. **MS (Sentinel-2 L1C)**: fractions mix surface reflectance curves (red edge and NIR
   plateau of vegetation, water dark in NIR/SWIR, flat bright built-up). Wet soil and
   litter darken, most in the SWIR (B11, B12; Lobell & Asner, 2002); rough soil darkens
   a little by self-shadowing. Then a per-image atmosphere (haze path reflectance,
   illumination, water-vapour/cirrus absorption in B09/B10), **thin clouds** on 30% of
   the images (a smooth optical-thickness field blending a flat bright cloud spectrum
   over the surface: MS-only, SAR sees through) and sensor noise give digital numbers
   (reflectance x 10,000). Whole scenes may instead be seen under a **cloudy sky**
   (:func:`cloudy_sky`, :func:`cloudy_toa`): thick low clouds, thin cirrus bright in
   B10, and the low clouds' shadows cast away from the sun, lit by skylight only.

3. **SAR (Sentinel-1 GRD, VV/VH)**: fractions mix per-material backscatter (linear
   power). Soil backscatter rises with moisture (dielectric constant: about 0.25 dB per
   vol%, so the moisture range spans about 9 dB) and with roughness (VH more than VV);
   under canopies the ground term is attenuated (crop/grass 40%, forest 10% of the soil
   sensitivity). Per image: an incidence-angle offset and wind roughening of water;
   double-bounce bright points on buildings; multiplicative gamma speckle (4 looks),
   then dB.

Why this makes a cross-modal benchmark: moisture and roughness move the backscatter of
soil and low vegetation by several dB, so in SAR alone AnnualCrop, Pasture,
HerbaceousVegetation and PermanentCrop overlap; what tells them apart is the spatial
structure of the shared latent (per-parcel moisture/roughness and crop rows on managed
fields, smooth fields on pasture and natural land), which MS sees clearly (SWIR and
visible/NIR) and SAR only through speckle. MS is harder where clouds hide the surface,
and SAR sees through them. Several classes still share backscatter levels, so SAR alone
stays clearly harder than MS alone.
Everything is deterministic for a seed: each image has its own seeded generator.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

#: Materials mixed inside a pixel, in the order of the tables below.
MATERIALS: tuple[str, ...] = (
    "crop", "forest", "grass", "dry_vegetation", "soil",
    "asphalt", "concrete", "tile_roof", "water", "turbid_water",
)  # fmt: skip

# Surface reflectance of each material at the 13 bands, in S2_BANDS order
# (B01 443, B02 490, B03 560, B04 665, B05 705, B06 740, B07 783, B08 842, B09 945,
# B10 1375, B11 1610, B12 2190, B8A 865 nm). Shapes after USGS/ASTER library spectra.
_REFLECTANCE = np.array([
    [.030, .040, .085, .040, .130, .330, .420, .450, .450, .400, .230, .110, .460],  # crop
    [.020, .025, .050, .025, .075, .200, .260, .280, .280, .250, .140, .055, .285],  # forest
    [.035, .045, .090, .055, .130, .270, .330, .360, .360, .320, .250, .130, .365],  # grass
    [.050, .060, .100, .110, .160, .220, .250, .270, .280, .260, .320, .220, .275],  # dry veg
    [.070, .090, .130, .170, .200, .220, .240, .260, .280, .290, .340, .290, .265],  # soil
    [.060, .065, .075, .085, .090, .095, .100, .105, .110, .115, .120, .110, .106],  # asphalt
    [.220, .250, .280, .300, .310, .320, .330, .340, .350, .350, .360, .330, .340],  # concrete
    [.050, .060, .080, .190, .230, .250, .270, .280, .290, .300, .330, .280, .285],  # tile
    [.050, .045, .035, .015, .010, .007, .005, .004, .003, .002, .002, .001, .004],  # water
    [.060, .060, .070, .050, .045, .025, .018, .014, .010, .006, .004, .002, .012],  # turbid
], dtype=np.float32)  # fmt: skip

# Top-of-atmosphere: path reflectance (haze, strongest in the blue) and two-way
# transmittance (B09 water vapour and B10 cirrus bands are mostly absorbed).
_PATH = np.array([.090, .065, .040, .025, .022, .018, .014, .012, .010, .0012, .004, .002, .011],
                 dtype=np.float32)
_TRANSMITTANCE = np.array([.75, .80, .85, .90, .90, .91, .92, .93, .45, .015, .93, .90, .93],
                          dtype=np.float32)

# C-band backscatter (sigma0, dB) of each material in VV and VH.
_SIGMA0_DB = np.array([
    [-10.5, -17.0],  # crop: moderate volume scattering
    [-7.5, -12.5],  # forest: strong volume scattering, high VH
    [-12.0, -19.0],  # grass
    [-11.0, -18.0],  # dry vegetation
    [-12.5, -21.0],  # soil: surface scattering, moisture dependent
    [-18.0, -26.0],  # asphalt: smooth, specular away from the sensor
    [-5.0, -12.0],  # concrete: buildings, corner reflectors
    [-4.0, -11.0],  # tile roofs: pitched roofs facing the sensor
    [-21.0, -28.0],  # water
    [-20.0, -27.0],  # turbid water
], dtype=np.float32)  # fmt: skip

# Extinction of reflectance by soil moisture, per band (reflectance x exp(-k * moisture)):
# moderate in the visible and NIR, strongest in the SWIR water absorption (B11, B12).
_WET_DARKENING = np.array([1.2, 1.2, 1.2, 1.2, 1.3, 1.3, 1.3, 1.3, 1.6, 1.6, 2.6, 3.0, 1.3],
                          dtype=np.float32)
# Thin cloud top-of-atmosphere reflectance: bright and flat, a little lower in the SWIR.
_CLOUD = np.array([.55, .55, .55, .55, .55, .55, .55, .55, .50, .45, .40, .30, .55],
                  dtype=np.float32)

_M = {name: i for i, name in enumerate(MATERIALS)}
_VEGETATION = [_M["crop"], _M["forest"], _M["grass"], _M["dry_vegetation"]]
_BUILT = [_M["concrete"], _M["tile_roof"]]
_WATER = [_M["water"], _M["turbid_water"]]
_GREEN = [_M["crop"], _M["forest"], _M["grass"]]  # green vegetation (NDVI high)
_LOOKS = 4.0  # equivalent number of looks of the speckle (Sentinel-1 GRD IW: about 4.4)
_NOISE_FLOOR = 10 ** (-27 / 10)  # thermal noise equivalent sigma0, linear
_LINE_SPACING = (56, 80)  # px between repeated roads / river reaches: one per 64 px patch

Cover = np.ndarray  # (len(MATERIALS), H, W) float32 fractions summing to 1 per pixel
Parcels = np.ndarray | None  # (H, W) int parcel index of managed fields, or None

# Sensitivity of each material's sigma0 to soil moisture and roughness, relative to bare
# soil: the ground term seen through the canopy (Attema & Ulaby's water-cloud model).
_GROUND = np.zeros(len(MATERIALS), dtype=np.float32)
_GROUND[[_M["soil"]]] = 1.0
_GROUND[[_M["crop"], _M["grass"], _M["dry_vegetation"]]] = 0.4
_GROUND[[_M["forest"]]] = 0.1
_SOIL_LIKE = [_M["soil"], _M["dry_vegetation"]]  # surfaces whose reflectance moisture darkens
_MOISTURE_DB = 25.0  # dB of soil sigma0 per unit volumetric moisture (0.25 dB per vol%)
_ROUGHNESS_DB = np.array([5.0, 7.0], dtype=np.float32)  # VV, VH dB over the roughness range
_CLOUDY = 0.3  # fraction of MS images with thin clouds


@dataclass
class Surface:
    """The per-sample surface state both sensors observe (see the module docstring).

    Attributes:
        cover: ``(len(MATERIALS), H, W)`` material fractions summing to one per pixel.
        moisture: ``(H, W)`` volumetric soil moisture (m3/m3).
        roughness: ``(H, W)`` surface roughness index in [0, 1].
    """

    cover: Cover
    moisture: np.ndarray
    roughness: np.ndarray


# --------------------------------------------------------------------------- textures
def _noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator,
           stretch: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Gaussian-smoothed white noise (``sigma`` in px), zero mean and unit std.

    ``stretch`` > 1 smooths ``stretch`` times more along the direction ``angle`` (radians
    from the column axis): streaks, such as cirrus drawn out by the wind.
    """
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    if stretch != 1.0:
        c, s = np.cos(angle), np.sin(angle)
        fx, fy = (fx * c + fy * s) * stretch, -fx * s + fy * c
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=shape)
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _frame(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle about a random point near the centre.

    Returns ``(u, v)``: along- and across-track distances in px, so textures built on
    them have a random orientation and phase but a fixed pixel scale.
    """
    theta = rng.uniform(0, np.pi)
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    y -= shape[0] / 2 + rng.uniform(-8, 8)
    x -= shape[1] / 2 + rng.uniform(-8, 8)
    c, s = np.cos(theta), np.sin(theta)
    return x * c + y * s, -x * s + y * c


def _parcels(u: np.ndarray, v: np.ndarray, width: tuple[float, float],
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rectangular parcels on the rotated grid.

    Returns:
        parcel index (int, dense from 0), the distance to the parcel border in px, and
        the across coordinate ``v`` (for rows inside the parcels).
    """
    wu, wv = rng.uniform(*width, size=2)
    iu, iv = np.floor(u / wu).astype(np.int64), np.floor(v / wv).astype(np.int64)
    iu -= iu.min()
    iv -= iv.min()
    index = iu * (iv.max() + 1) + iv
    border = np.minimum.reduce([u / wu - np.floor(u / wu), np.ceil(u / wu) - u / wu,
                                v / wv - np.floor(v / wv), np.ceil(v / wv) - v / wv])
    return index, border * min(wu, wv), v


def _lines(shape: tuple[int, int], rng: np.random.Generator,
           meander: bool) -> np.ndarray:
    """Distance in px to the nearest of a family of parallel lines (roads, rivers).

    Lines repeat every 56-80 px, so a 64 px patch holds about one and a scene region
    holds one every patch-width; one passes within 12 px of the centre.
    """
    u, v = _frame(shape, rng)
    if meander:
        v = v + rng.uniform(3, 12) * np.sin(2 * np.pi * u / rng.uniform(60, 150)
                                            + rng.uniform(0, 2 * np.pi))
    spacing = rng.uniform(*_LINE_SPACING)
    offset = rng.uniform(-12, 12)
    return np.abs((v - offset + spacing / 2) % spacing - spacing / 2)


def _mix(shape: tuple[int, int], weights: dict[str, np.ndarray | float]) -> Cover:
    """Stack per-material weights (arrays or constants) into normalised fractions."""
    cover = np.zeros((len(MATERIALS), *shape), dtype=np.float32)
    for name, w in weights.items():
        cover[_M[name]] += np.clip(w, 0, None)
    return cover / np.maximum(cover.sum(0, keepdims=True), 1e-6)


def _softmix(shape: tuple[int, int], names: list[str], means: list[float], sigma: float,
             contrast: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Patchy mixture: each material's weight is a smoothed noise field around its mean."""
    return {n: m * np.exp(contrast * _noise(shape, sigma, rng)) for n, m in zip(names, means,
                                                                               strict=True)}


def _add(weights: dict[str, np.ndarray | float], extra: dict[str, np.ndarray | float],
         ) -> dict[str, np.ndarray | float]:
    out = dict(weights)
    for name, w in extra.items():
        out[name] = out.get(name, 0.0) + w
    return out


def _annual_crop(shape: tuple[int, int], rng: np.random.Generator) -> tuple[Cover, Parcels]:
    u, v = _frame(shape, rng)
    index, border, rows = _parcels(u, v, (12, 30), rng)
    n = index.max() + 1
    # per parcel: growth stage from bare soil through green crop to ripe (dry) crop
    stage = rng.choice(3, size=n, p=[0.3, 0.45, 0.25])[index]
    row = 0.5 + 0.5 * np.cos(2 * np.pi * rows / rng.uniform(3, 6))
    green = np.where(stage == 1, 0.75 + 0.25 * row, 0.1 * row)
    dry = np.where(stage == 2, 0.7 + 0.3 * row, 0.05)
    edge = (border < 1).astype(np.float32)
    return _mix(shape, {"crop": green * (1 - edge), "dry_vegetation": dry * (1 - edge),
                        "soil": np.where(stage == 0, 1.0, 0.25 * (1 - row)) * (1 - edge),
                        "grass": edge}), index


def _permanent_crop(shape: tuple[int, int],
                    rng: np.random.Generator) -> tuple[Cover, Parcels]:
    u, v = _frame(shape, rng)
    index, border, rows = _parcels(u, v, (15, 35), rng)
    n = index.max() + 1
    period = rng.uniform(4, 7)
    orchard = rng.random(n)[index] < 0.5  # orchards: tree dots; vineyards: rows
    across = np.cos(2 * np.pi * rows / period)
    along = np.where(orchard, np.cos(2 * np.pi * u / period), 1.0)
    canopy = np.clip(across * along, 0, 1) ** 0.5 * rng.uniform(0.5, 0.9)
    grassed = (rng.random(n) < 0.3)[index]  # inter-row: mostly tilled soil, some grassed
    edge = (border < 1).astype(np.float32)
    rest = 1 - canopy
    return _mix(shape, {"forest": 0.6 * canopy, "crop": 0.4 * canopy,
                        "grass": rest * grassed + edge, "soil": rest * ~grassed,
                        "dry_vegetation": rest * 0.3}), index


def _pasture(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    u, v = _frame(shape, rng)
    _, border, _ = _parcels(u, v, (30, 70), rng)
    dryness = rng.uniform(0.05, 0.35)
    hedge = (border < 1.2).astype(np.float32) * (rng.random() < 0.6)
    weights = _softmix(shape, ["grass", "dry_vegetation", "crop"], [1.0, dryness, 0.15],
                       sigma=10, contrast=0.5, rng=rng)
    return _mix(shape, _add({k: w * (1 - hedge) for k, w in weights.items()},
                            {"forest": 3 * hedge}))


def _herbaceous(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    return _mix(shape, _softmix(shape, ["grass", "dry_vegetation", "forest", "soil"],
                                [0.6, 0.8, 0.25, 0.05], sigma=rng.uniform(2.5, 5),
                                contrast=1.2, rng=rng))


def _forest(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    crowns = np.exp(0.35 * _noise(shape, rng.uniform(0.8, 1.5), rng))
    gaps = (_noise(shape, 6, rng) > rng.uniform(1.2, 2.2)).astype(np.float32)
    return _mix(shape, {"forest": crowns * (1 - gaps), "grass": 0.8 * gaps + 0.05,
                        "dry_vegetation": 0.3 * gaps})


def _highway(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    dist = _lines(shape, rng, meander=False)
    half = rng.uniform(2.5, 4.5)  # dual carriageway
    road = np.clip(half + 0.5 - dist, 0, 1)
    shoulder = np.clip(half + 2.5 - dist, 0, 1) - road
    land = _softmix(shape, ["grass", "dry_vegetation", "soil"], [0.6, 0.5, 0.3],
                    sigma=8, contrast=1.0, rng=rng)
    scale = 1 - road - shoulder
    return _mix(shape, _add({k: w * scale / 1.4 for k, w in land.items()},
                            {"asphalt": road, "concrete": shoulder}))


def _industrial(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    u, v = _frame(shape, rng)
    index, border, _ = _parcels(u, v, (10, 25), rng)
    n = index.max() + 1
    lot = rng.choice(4, size=n, p=[0.65, 0.15, 0.1, 0.1])[index]  # roof, yard, bare, green
    street = (border < rng.uniform(0.7, 1.5)).astype(np.float32)
    inside = 1 - street
    return _mix(shape, {"concrete": (lot == 0) * inside, "asphalt": (lot == 1) * inside + street,
                        "soil": (lot == 2) * inside, "grass": (lot == 3) * inside,
                        "tile_roof": 0.15 * (lot == 0) * inside})


def _residential(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    u, v = _frame(shape, rng)
    index, border, _ = _parcels(u, v, (10, 16), rng)
    n = index.max() + 1
    period = rng.uniform(4, 6)
    houses = np.clip(np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period), 0, 1)
    tile = rng.random(n)[index] < 0.7  # per block: tiled or flat concrete roofs
    street = (border < 1).astype(np.float32)
    garden = (1 - houses) * (1 - street)
    trees = np.clip(_noise(shape, 2, rng), 0, None) * 0.4
    return _mix(shape, {"tile_roof": houses * tile * (1 - street),
                        "concrete": houses * ~tile * (1 - street), "asphalt": street,
                        "grass": garden, "forest": garden * trees})


def _river(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    dist = _lines(shape, rng, meander=True)
    half = rng.uniform(3.5, 7)
    water = np.clip(half + 0.5 - dist, 0, 1)
    bank = np.clip(half + 2.5 - dist, 0, 1) - water
    land = _softmix(shape, ["grass", "crop", "forest", "soil"], [0.7, 0.4, 0.1, 0.1],
                    sigma=6, contrast=1.0, rng=rng)
    scale = 1 - water - bank
    clear = rng.uniform(0, 0.4)
    return _mix(shape, _add({k: w * scale / 1.3 for k, w in land.items()},
                            {"turbid_water": water * (1 - clear), "water": water * clear,
                             "forest": bank}))


def _sea_lake(shape: tuple[int, int], rng: np.random.Generator) -> Cover:
    turbidity = rng.uniform(0, 0.6) * np.exp(0.5 * _noise(shape, 12, rng))
    weights: dict[str, np.ndarray | float] = {"water": 1.0 - np.clip(turbidity, 0, 1),
                                              "turbid_water": np.clip(turbidity, 0, 1)}
    if rng.random() < 0.35:  # a shore strip of 3-20 px along one side
        _, v = _frame(shape, rng)
        land = np.clip(v - (v.max() - rng.uniform(3, 20)), 0, 1)
        weights = {k: w * (1 - land) for k, w in weights.items()}
        weights = _add(weights, {"grass": 0.6 * land, "forest": 0.3 * land, "soil": 0.1 * land})
    return _mix(shape, weights)


#: Texture recipe of each class, in EUROSAT_CLASSES order: cover, or (cover, parcels) for
#: managed fields whose parcels differ in moisture and roughness.
_RECIPES: tuple[Callable[[tuple[int, int], np.random.Generator],
                         Cover | tuple[Cover, Parcels]], ...] = (
    _annual_crop, _forest, _herbaceous, _highway, _industrial,
    _pasture, _permanent_crop, _residential, _river, _sea_lake,
)  # fmt: skip


# --------------------------------------------------------------------------- sensors
def land_surface(class_index: int, shape: tuple[int, int],
                 rng: np.random.Generator) -> Surface:
    """The surface state of one image of a class over ``shape`` pixels at 10 m.

    Material fractions from the class recipe; soil moisture and roughness as in the module
    docstring (per parcel on managed fields).

    Args:
        class_index: index into :data:`~discomkd_geo.constants.EUROSAT_CLASSES`.
        shape: ``(height, width)`` in pixels.
        rng: the generator that draws this image's surface.
    """
    drawn = _RECIPES[class_index](shape, rng)
    cover, parcels = drawn if isinstance(drawn, tuple) else (drawn, None)
    moisture = rng.uniform(0.08, 0.40) + 0.03 * _noise(shape, 12, rng)
    roughness = rng.uniform(0.1, 0.4) + 0.08 * _noise(shape, 8, rng)
    if parcels is not None:  # managed fields: irrigation/drainage and tillage per parcel
        n = parcels.max() + 1
        moisture = moisture + rng.normal(0, 0.08, size=n)[parcels]
        roughness = rng.uniform(0, 1, size=n)[parcels] + 0.05 * _noise(shape, 4, rng)
    return Surface(cover, np.clip(moisture, 0.05, 0.45).astype(np.float32),
                   np.clip(roughness, 0, 1).astype(np.float32))


def _thin_clouds(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Per-pixel cloud fraction ``1 - exp(-tau)`` of a smooth optical-thickness field."""
    tau = np.clip(rng.uniform(0.05, 0.5) + 0.3 * _noise(shape, 15, rng), 0, None)
    return (1 - np.exp(-tau)).astype(np.float32)


def ms_toa_terms(surface: Surface, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of a surface's clear-sky Sentinel-2 L1C top-of-atmosphere reflectance.

    Per image: material spectra jitter (phenology, soil colour), illumination gain and
    haze; per pixel: wet and rough soil darkening.

    Returns:
        ``(path, ground)``: the path reflectance of the haze, float32 ``(13, 1, 1)``, and
        the surface's reflectance as seen through the atmosphere, float32 ``(13, H, W)``;
        the top-of-atmosphere reflectance is their sum. Kept apart because a cloud's
        shadow dims the ground term only.
    """
    cover = surface.cover
    jitter = 1 + rng.normal(0, 0.04, size=(len(MATERIALS), 1)) \
        + rng.normal(0, 0.02, size=_REFLECTANCE.shape)
    reflectance = (_REFLECTANCE * jitter).astype(np.float32)
    others = [i for i in range(len(MATERIALS)) if i not in _SOIL_LIKE]
    surface_bands = np.einsum("mb,mhw->bhw", reflectance[others], cover[others])
    # the soil spectra of the table are those of field soil at about 0.1 m3/m3
    darkening = np.exp(-_WET_DARKENING[:, None, None] * (surface.moisture - 0.1)[None]) \
        * (1 - 0.15 * surface.roughness[None])
    surface_bands += darkening * np.einsum("mb,mhw->bhw", reflectance[_SOIL_LIKE],
                                           cover[_SOIL_LIKE])
    gain = rng.uniform(0.92, 1.08)
    haze = rng.uniform(0.8, 1.3)
    return _PATH[:, None, None] * haze, gain * _TRANSMITTANCE[:, None, None] * surface_bands


def sensor_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Radiometric noise of the digital numbers (float32, 12 DN rms)."""
    return rng.normal(0, 12, size=shape).astype(np.float32)


def digital_numbers(toa: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Top-of-atmosphere reflectance plus noise as L1C digital numbers (reflectance x 10,000).

    Returns:
        uint16, never 0 (0 is the scenes' nodata).
    """
    return np.clip(np.rint(toa * 10_000 + noise), 1, 65535).astype(np.uint16)


def ms_digital_numbers(surface: Surface, rng: np.random.Generator,
                       clouds: bool = True) -> np.ndarray:
    """Sentinel-2 L1C digital numbers (reflectance x 10,000) of a surface.

    The clear-sky terms of :func:`ms_toa_terms`, then thin clouds on some images (when
    ``clouds``) and sensor noise.

    Returns:
        uint16 ``(13, H, W)``, never 0 (0 is the scenes' nodata).
    """
    path, ground = ms_toa_terms(surface, rng)
    toa = path + ground
    if clouds and rng.random() < _CLOUDY:
        fraction = _thin_clouds(surface.cover.shape[1:], rng)[None]
        toa = (1 - fraction) * toa + fraction * _CLOUD[:, None, None]
    return digital_numbers(toa, sensor_noise(toa.shape, rng))


def sar_sigma0(surface: Surface, rng: np.random.Generator) -> np.ndarray:
    """Noise-free Sentinel-1 backscatter (linear power, VV and VH) of a surface.

    Per pixel: the ground term of soil and vegetation rises with the surface's moisture
    and roughness (attenuated under canopies). Per image: an incidence-angle offset, wind
    roughening of water; double-bounce bright points where buildings dominate a pixel.

    Returns:
        float32 ``(2, H, W)`` sigma0 in linear power, speckle-free.
    """
    cover = surface.cover
    db = _SIGMA0_DB + rng.normal(0, 0.8)  # incidence angle
    db[_WATER] += rng.uniform(0, 6)  # wind-roughened surface
    db += rng.normal(0, 0.5, size=db.shape)
    # per pixel and material: ground term of moisture (about 0.2 m3/m3 in the table) and
    # roughness (0.3 in the table), scaled by how much of the ground the material shows
    ground = (_MOISTURE_DB * (surface.moisture - 0.2))[None] \
        + _ROUGHNESS_DB[:, None, None] * (surface.roughness - 0.3)[None]  # (2, H, W)
    shifted = db.T[:, :, None, None] + _GROUND[None, :, None, None] * ground[:, None]
    power = np.einsum("pmhw,mhw->phw", (10 ** (shifted / 10)).astype(np.float32), cover)
    built = cover[_BUILT].sum(0)
    bright = rng.random(built.shape) < 0.25 * np.clip(built - 0.2, 0, None)
    boost = 10 ** (rng.uniform(6, 14, size=built.shape) / 10)
    power = power * np.where(bright, boost, 1.0)[None].astype(np.float32)
    return power + np.float32(_NOISE_FLOOR)


def sar_decibels(sigma0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply multiplicative gamma speckle (4 looks) to linear sigma0 and convert to dB.

    NaN (nodata) stays NaN.

    Returns:
        float32 array of the same shape, in dB.
    """
    speckle = rng.gamma(_LOOKS, 1 / _LOOKS, size=sigma0.shape).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (10 * np.log10(sigma0 * speckle)).astype(np.float32)


# --------------------------------------------------------------------------- clouds
# Reflectance of a cloud layer relative to the visible, in S2_BANDS order: flat across the
# VNIR (droplets and crystals scatter without absorbing there), lower in the SWIR where
# liquid water (B11, more in B12) and, more strongly, ice absorb. The water vapour above
# the cloud top (B09, B10) is applied separately, by height.
_WATER_CLOUD = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, .80, .55, 1], dtype=np.float32)
_ICE_CLOUD = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, .95, .60, .35, 1], dtype=np.float32)
# Diffuse (skylight) share of the clear-sky irradiance at the ground for a sun about 40 deg
# from the zenith and rural aerosol: Rayleigh scattering makes the sky bluest. In a
# cloud's shadow only this share lights the ground.
_DIFFUSE = np.array([.35, .28, .20, .14, .12, .11, .10, .09, .08, .08, .05, .03, .085],
                    dtype=np.float32)
_ABSORBER_HEIGHT_KM = 2.0  # scale height of water vapour and aerosol
_RAYLEIGH_HEIGHT_KM = 8.0  # scale height of the air (path reflectance above a cloud)
_ASYMMETRY = {"water": 0.85, "ice": 0.75}  # forward-scattering of droplets and crystals
_CLOUD_SIGMAS = (40.0, 12.0, 4.0)  # px: cloud fields from 400 m cells down to 40 m turrets
_CLOUD_EDGE = 0.07  # field units over which thickness grows e-fold: edges of 20-40 m
_THICK_SHARE = 0.75  # of the cloud cover: low water clouds; the rest thin cirrus alone

#: Optical thickness from which a pixel is cloud (SCL 8, medium probability): its cloud
#: reflects about 13% and hides the ground's texture.
TAU_CLOUD = 2.0
#: ... cloud of high probability (SCL 9): it reflects more than a third of the light.
TAU_OPAQUE = 8.0
#: Cirrus optical thickness from which a pixel is thin cirrus (SCL 10): its B10 top-of-
#: atmosphere reflectance exceeds 0.012, Sen2Cor's thin-cirrus threshold.
TAU_CIRRUS = 0.1


@dataclass
class Sky:
    """Clouds over a scene, and where their shadows fall (see :func:`cloudy_sky`).

    Attributes:
        cloud: ``(H, W)`` optical thickness of the low water-cloud layer.
        cirrus: ``(H, W)`` optical thickness of the cirrus layer.
        shade: ``(H, W)`` optical thickness of the low layer on each pixel's path to the sun.
        cloud_top: height of the low layer's top (km).
        cirrus_height: height of the cirrus (km).
        sun_zenith: solar zenith angle (degrees).
        shadow_offset: ``(rows, cols)`` from a cloud to its shadow, in pixels.
    """

    cloud: np.ndarray
    cirrus: np.ndarray
    shade: np.ndarray
    cloud_top: float
    cirrus_height: float
    sun_zenith: float
    shadow_offset: tuple[int, int]

    def __getitem__(self, box: tuple[slice, slice]) -> "Sky":
        """The sky over a window ``(rows, cols)`` of the scene."""
        return replace(self, cloud=self.cloud[box], cirrus=self.cirrus[box],
                       shade=self.shade[box])

    def masks(self) -> dict[str, np.ndarray]:
        """Bool ``(H, W)`` truth masks; each pixel is in at most one.

        In the order seen from above: ``opaque`` (SCL 9), ``cloud`` (SCL 8), ``cirrus``
        (SCL 10), ``shadow`` (SCL 3: the low layer blocks the direct sun).
        """
        cloud = self.cloud >= TAU_CLOUD
        cirrus = (self.cirrus >= TAU_CIRRUS) & ~cloud
        shadow = (self.shade >= TAU_CLOUD) & ~cloud & ~cirrus
        opaque = self.cloud >= TAU_OPAQUE
        return {"opaque": opaque, "cloud": cloud & ~opaque, "cirrus": cirrus,
                "shadow": shadow}


def _above(height_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-way transmittance and path reflectance of the atmosphere above ``height_km``.

    Water vapour (B09, B10) and aerosol thin out with a 2 km scale height, so a cloud top
    at 1-3 km already lies above most of the vapour that hides the ground in B10 (the
    cirrus band): clouds are bright there, clear ground is not.
    """
    transmittance = _TRANSMITTANCE ** np.float32(np.exp(-height_km / _ABSORBER_HEIGHT_KM))
    return transmittance, _PATH * np.float32(np.exp(-height_km / _RAYLEIGH_HEIGHT_KM))


def _albedo(tau: np.ndarray, phase: str) -> np.ndarray:
    """Two-stream reflectance of a non-absorbing layer: ``(1-g) tau / (2 + (1-g) tau)``."""
    scaled = (1 - _ASYMMETRY[phase]) * tau
    return (scaled / (2 + scaled)).astype(np.float32)


def _layer(field: np.ndarray, inside: np.ndarray, share: float, edge: float,
           base: float, top: np.ndarray) -> np.ndarray:
    """Optical thickness of a cloud layer from a random field.

    The ``share`` of the ``inside`` pixels where the field is highest gets thickness
    ``base`` or more, growing e-fold every ``edge`` of the field up to ``top``; outside
    it decays as fast (the cloud's rim).
    """
    if share <= 0:
        return np.zeros_like(field)
    level = np.quantile(field[inside], 1 - min(share, 1.0)) if share < 1 else -np.inf
    return np.minimum(base * np.exp(np.clip((field - level) / edge, None, 30.0)),
                      top).astype(np.float32)


def cloudy_sky(shape: tuple[int, int], cover: float, rng: np.random.Generator,
               pixel_size: float = 10.0) -> Sky:
    """Draw clouds, cirrus and the sun over a scene of ``shape`` pixels.

    A low layer of water clouds (tops at 1-3 km, optical thickness 20-60 at the cores,
    rims of a few pixels) covers three quarters of ``cover``, and thin cirrus (8-12 km,
    streaks drawn out by the wind) the rest of it outside the low clouds, so ``cover`` is
    the cloudy share (SCL 8, 9, 10) of the scene. The sun stands 25-55 deg from the zenith
    at azimuth 135-165 deg (Sentinel-2's 10:30 descending pass over Europe): each low
    cloud's shadow falls ``top x tan(zenith)`` away, towards the north-north-west,
    including the shadows of clouds just outside the scene. Cirrus shadows are not drawn:
    crystals scatter forward, so they dim the ground by a few per cent only.

    Args:
        shape: ``(height, width)`` of the scene in pixels.
        cover: cloudy share of the scene, 0-1.
        rng: the sky's generator.
        pixel_size: metres per pixel.
    """
    top = rng.uniform(1.0, 3.0)
    zenith = rng.uniform(25.0, 55.0)
    azimuth = np.radians(rng.uniform(135.0, 165.0))
    reach = top * 1000 * np.tan(np.radians(zenith)) / pixel_size
    # shadows lie away from the sun: east = -sin(azimuth), north = -cos(azimuth); rows run south
    offset = (int(round(reach * np.cos(azimuth))), int(round(-reach * np.sin(azimuth))))
    # the clouds over the scene and those whose shadows reach into it
    h, w = shape
    grown = (h + abs(offset[0]), w + abs(offset[1]))
    r0, c0 = max(offset[0], 0), max(offset[1], 0)
    scene = (slice(r0, r0 + h), slice(c0, c0 + w))
    field = sum(weight * _noise(grown, sigma, rng)
                for weight, sigma in zip((1.0, 0.5, 0.25), _CLOUD_SIGMAS, strict=True))
    inside = np.zeros(grown, dtype=bool)
    inside[scene] = True
    cores = rng.uniform(20.0, 60.0) * np.exp(0.3 * _noise(grown, 8.0, rng))
    low = _layer(field, inside, _THICK_SHARE * cover, _CLOUD_EDGE, TAU_CLOUD, cores)
    streaks = _noise(shape, 25.0, rng, stretch=rng.uniform(3.0, 6.0),
                     angle=rng.uniform(0, np.pi))
    clear = low[scene] < TAU_CLOUD
    thin_share = (1 - _THICK_SHARE) * cover / max(clear.mean(), 1e-6)
    cirrus = _layer(streaks, clear, thin_share, 0.3, TAU_CIRRUS,
                    np.float32(rng.uniform(0.4, 1.0)))
    shade = low[r0 - offset[0]:r0 - offset[0] + h, c0 - offset[1]:c0 - offset[1] + w]
    return Sky(low[scene], cirrus, shade, float(top), float(rng.uniform(8.0, 12.0)),
               float(zenith), offset)


def cloudy_toa(path: np.ndarray, ground: np.ndarray, sky: Sky) -> np.ndarray:
    """Sentinel-2 L1C top-of-atmosphere reflectance of a scene under ``sky``.

    Shadows first: where the low layer blocks the sun, the ground is lit by the
    diffuse skylight and the direct beam that gets through the cloud
    (``exp(-tau / cos(zenith))``), so shadows are darkest in the NIR and SWIR and keep
    some blue. Then each layer, lowest first, reflects its albedo ``R(tau)`` of the light
    (its spectrum seen through the air above it, plus that air's path reflectance) and
    passes ``1 - R`` of what lies below: thick clouds are bright and nearly flat across
    the bands, cirrus adds little except in B10, where the ground is hidden by vapour.

    Args:
        path: path reflectance, float32 broadcastable to ``(13, H, W)``.
        ground: the ground term, float32 ``(13, H, W)`` (see :func:`ms_toa_terms`).
        sky: the clouds.

    Returns:
        float32 ``(13, H, W)`` reflectance.
    """
    direct = np.exp(-sky.shade / np.float32(np.cos(np.radians(sky.sun_zenith))))[None]
    diffuse = _DIFFUSE[:, None, None]
    toa = path + ground * (diffuse + (1 - diffuse) * direct)
    for tau, height, phase, spectrum in ((sky.cloud, sky.cloud_top, "water", _WATER_CLOUD),
                                         (sky.cirrus, sky.cirrus_height, "ice", _ICE_CLOUD)):
        transmittance, above = _above(height)
        albedo = _albedo(tau, phase)[None]
        layer = (spectrum * transmittance + above)[:, None, None]
        toa = (1 - albedo) * toa + albedo * layer
    return toa.astype(np.float32)


def scene_class(cover: Cover) -> np.ndarray:
    """Sentinel-2 L2A scene classification (ESA's SCL codes) of clear pixels.

    4 vegetation, 5 not vegetated, 6 water: the material making up at least half of each
    pixel.

    Returns:
        uint8 ``(H, W)``.
    """
    water = cover[_WATER].sum(0) >= 0.5
    green = cover[_GREEN].sum(0) >= 0.5
    return np.where(water, 6, np.where(green, 4, 5)).astype(np.uint8)


def render_class(class_index: int, size: int | tuple[int, int],
                 rng: np.random.Generator, clouds: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One co-registered MS/SAR image of a class, as in EuroSat-MS-SAR.

    Args:
        class_index: index into :data:`~discomkd_geo.constants.EUROSAT_CLASSES`.
        size: side (or ``(height, width)``) in pixels at 10 m.
        rng: the image's generator; the same state gives the same image.
        clouds: let thin clouds cover some MS images (as in the datasets written).

    Returns:
        ``(ms, sar)``: uint16 ``(13, H, W)`` digital numbers and float32 ``(2, H, W)``
        VV/VH backscatter in dB.
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    surface = land_surface(class_index, shape, rng)  # type: ignore[arg-type]
    # one generator per sensor: a sensor's draws (e.g. clouds or not) never shift the other's
    ms_rng, sar_rng = rng.spawn(2)
    return (ms_digital_numbers(surface, ms_rng, clouds),
            sar_decibels(sar_sigma0(surface, sar_rng), sar_rng))

"""Facts about the data shared by every layer: band names, classes, colours, codes.

Sources: EuroSAT (Helber et al., 2019, https://github.com/phelber/EuroSAT) band order as
TorchGeo lists it, EuroSAT-SAR (Wang et al., FG-MAE, 2023) dual-polarisation bands.
"""

#: Sentinel-2 L1C bands in the order of the EuroSAT MS GeoTIFFs (TorchGeo's ``EuroSAT``).
S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip

#: Sentinel-2 bands at 60 m resolution (aerosol, water vapour, cirrus).
S2_60M_BANDS: tuple[str, ...] = ("B01", "B09", "B10")

#: Bands that make the natural-colour quicklook of an MS image.
S2_RGB_BANDS: tuple[str, str, str] = ("B04", "B03", "B02")

#: Sentinel-1 GRD dual-polarisation bands, in the order of the EuroSAT-SAR GeoTIFFs.
S1_BANDS: tuple[str, ...] = ("VV", "VH")

#: The ten EuroSAT land-cover classes, in label order (alphabetical, as published).
EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

#: Display colours (RGB) for the EuroSAT classes, chosen after common land-cover palettes.
EUROSAT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 200, 90),  # AnnualCrop: ripening cereal
    (20, 100, 30),  # Forest
    (150, 200, 80),  # HerbaceousVegetation
    (120, 120, 120),  # Highway
    (160, 60, 160),  # Industrial
    (200, 230, 130),  # Pasture
    (210, 120, 40),  # PermanentCrop: orchards, vineyards
    (220, 30, 30),  # Residential
    (60, 130, 230),  # River
    (20, 40, 140),  # SeaLake
)

#: Modality names used throughout (dataset keys ``image_<name>``, model branches, CLI).
MS: str = "ms"
SAR: str = "sar"

#: Nodata value of every class-code raster this package writes or reads.
CLASS_NODATA: int = 255

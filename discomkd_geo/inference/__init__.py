"""Inference: tiling, the Dask engine and GeoTIFF writers for land-cover maps."""

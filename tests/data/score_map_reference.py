# The issues' reference map scorer (/work/shared/reference/score_map.py), verbatim below this
# header: an independent oracle for discomkd_geo.inference.scoring (tests/test_scoring.py).
"""How map figures are scored in the issues (a reference to cross-check your benchmark with).

usage: python score_map.py MAP.tif TRUTH.tif
Prints OA over pixels valid in both, OA within 3 px of a class boundary ("edge OA"), OA where
the pixel's 64 px neighbourhood holds one class ("pure") and where it mixes classes ("mixed").
The truth is warped onto the map's grid by nearest neighbour; the boundary band is the set of
truth pixels whose class differs from the pixel above or to the left, dilated 3 times (4-
connectivity), computed on the truth's own grid and warped the same way.
"""
import sys

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject
from scipy import ndimage

NODATA = 255


def onto(array, src, dst, nodata=None):
    out = np.full((dst.height, dst.width), NODATA if nodata is not None else 0, "uint8")
    reproject(array, out, src_transform=src.transform, src_crs=src.crs, dst_transform=dst.transform,
              dst_crs=dst.crs, resampling=Resampling.nearest, src_nodata=nodata, dst_nodata=nodata)
    return out


def main(map_path, truth_path):
    with rasterio.open(truth_path) as src, rasterio.open(map_path) as dst:
        truth = src.read(1)
        edge = np.zeros_like(truth, bool)
        for axis in (0, 1):
            edge |= truth != np.roll(truth, 1, axis=axis)
        edge = ndimage.binary_dilation(edge, iterations=3).astype("uint8")
        pure = (ndimage.maximum_filter(truth, 64) == ndimage.minimum_filter(truth, 64)).astype("uint8")
        pred = dst.read(1)
        t = onto(truth, src, dst, NODATA)
        e = onto(edge, src, dst).astype(bool)
        p = onto(pure, src, dst).astype(bool)
    valid = (pred != NODATA) & (t != NODATA)
    oa = lambda m: float((pred[valid & m] == t[valid & m]).mean())
    every = np.ones_like(valid)
    print(f"OA {oa(every):.3f}  edge OA {oa(e):.3f}  pure OA {oa(p):.3f}  mixed OA {oa(~p):.3f}  "
          f"(edge {(valid & e).sum() / valid.sum():.0%}, pure {(valid & p).sum() / valid.sum():.0%} of valid pixels)")


if __name__ == "__main__":
    main(*sys.argv[1:3])

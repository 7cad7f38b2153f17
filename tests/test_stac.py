"""STAC: a local Item in (its S1/S2 assets found), a valid Item out beside the map."""

import json
from pathlib import Path

import pystac
import pytest
import rasterio
from click.testing import CliRunner
from pystac.validation import validate_dict
from rasterio.warp import transform_bounds
from test_inference import saved_sar_model

from discomkd_geo.cli import main
from discomkd_geo.constants import EUROSAT_CLASSES, S1_BANDS, S2_BANDS
from discomkd_geo.errors import InputFileError
from discomkd_geo.inference.stac import read_item

EXTENSIONS = {"projection", "raster", "classification"}
#: The MS asset names its bands the way catalogues do: B1, B2, ... and one common name.
CATALOGUE_S2_NAMES = [b.replace("B0", "B") for b in S2_BANDS[:-1]] + ["nir08"]


def write_item(folder: Path, scene_dir: Path) -> Path:
    """A Sentinel-1/2 Item with one multi-band file per modality, plus a thumbnail."""
    item = pystac.Item("scene", {"type": "Point", "coordinates": [27.0, 45.0]},
                       [27.0, 45.0, 27.0, 45.0], pystac.utils.str_to_datetime(
                           "2024-06-01T09:30:00Z"), {})
    item.add_asset("thumbnail", pystac.Asset("thumb.png", media_type=pystac.MediaType.PNG,
                                             roles=["thumbnail"]))
    item.add_asset("s1", pystac.Asset(str(scene_dir / "sar.tif"), roles=["data"],
                                      media_type=pystac.MediaType.COG,
                                      extra_fields={"sar:polarizations": list(S1_BANDS)}))
    item.add_asset("s2", pystac.Asset(
        f"../{scene_dir.name}/ms.tif", roles=["data"], media_type=pystac.MediaType.GEOTIFF,
        extra_fields={"eo:bands": [{"name": n} for n in CATALOGUE_S2_NAMES]}))
    folder.mkdir(exist_ok=True)
    path = folder / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


def test_read_item_finds_each_modality_and_its_band_names(scene_dir: Path) -> None:
    item = write_item(scene_dir.parent / "catalogue", scene_dir)
    inputs = read_item(item)
    assert inputs.paths == {"sar": [str(scene_dir / "sar.tif")], "ms": [str(scene_dir / "ms.tif")]}
    assert inputs.bands == {"sar": list(S1_BANDS), "ms": list(S2_BANDS)}
    assert inputs.datetime is not None and inputs.datetime.year == 2024


def test_read_item_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    item = pystac.Item("x", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"),
                       {})
    item.add_asset("dem", pystac.Asset("dem.tif", roles=["data"],
                                       media_type=pystac.MediaType.GEOTIFF))
    empty.write_text(json.dumps(item.to_dict(include_self_link=False)))
    with pytest.raises(InputFileError, match=r"empty.json: no Sentinel-1 or Sentinel-2 asset "
                                             r"among \['dem'\]"):
        read_item(empty)
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    with pytest.raises(InputFileError, match="junk.json: not a readable STAC Item"):
        read_item(junk)


def test_predict_stac_maps_the_item_and_writes_a_valid_item(scene_dir: Path,
                                                            tmp_path: Path) -> None:
    item = write_item(tmp_path / "catalogue", scene_dir)
    model = saved_sar_model(tmp_path / "sar.pt")
    out = tmp_path / "maps" / "landcover.tif"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(model), "--stac",
                                       str(item), "--modality", "sar", "-o", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.with_suffix(".stac.json").read_text())

    # Core Item schema, from the copy pystac ships (works offline). The extension schemas
    # would be fetched from stac-extensions.github.io, which is out of reach here, so
    # their required fields are checked one by one below.
    validate_dict(written, extensions=[])
    assert {u.split("/")[3] for u in written["stac_extensions"]} == EXTENSIONS
    assert written["properties"]["datetime"] == "2024-06-01T09:30:00Z"
    props = written["properties"]
    with rasterio.open(out) as src:
        assert written["bbox"] == pytest.approx(list(transform_bounds(
            src.crs, "EPSG:4326", *src.bounds, densify_pts=21)))
        assert props["proj:bbox"] == pytest.approx(list(src.bounds))
        assert props["proj:code"] == src.crs.to_string()
        assert props["proj:shape"] == [src.height, src.width]
        assert props["proj:transform"] == list(src.transform)[:6]
    asset = written["assets"]["landcover"]
    assert asset["href"] == "landcover.tif" and asset["roles"] == ["data"]
    assert asset["raster:bands"] == [{"nodata": 255, "data_type": "uint8", "sampling": "area",
                                      "spatial_resolution": pytest.approx(src.res[0])}]
    classes = asset["classification:classes"]
    assert [c["value"] for c in classes] == list(range(len(EUROSAT_CLASSES)))
    assert [c["description"] for c in classes] == list(EUROSAT_CLASSES)
    assert classes[1]["color_hint"] == "14641E"  # Forest (20, 100, 30)
    assert {"style", "legend"} <= set(written["assets"])
    for key in ("style", "legend"):
        assert (out.parent / written["assets"][key]["href"]).is_file()
    links = {link["title"]: link["href"] for link in written["links"]
             if link["rel"] == "derived_from"}
    assert links == {"sar scene": (scene_dir / "sar.tif").resolve().as_uri(),
                     "input STAC Item": item.resolve().as_uri()}
    assert pystac.Item.from_dict(written).id == "landcover"

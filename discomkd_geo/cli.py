"""The ``discomkd-geo`` command line (and the ``rio discomkd`` plugin).

Top of the import flow: CLI -> training / inference -> models / data. Heavy libraries
(torch, rasterio, dask) are imported inside the commands, so ``--help`` is instant.
Every :class:`~discomkd_geo.errors.DiscomkdGeoError` becomes a one-line ``Error: ...``
and a non-zero exit.
"""

from pathlib import Path
from typing import Any

import click

from .errors import DiscomkdGeoError


class _Group(click.Group):
    """Click group that turns the package's errors into one-line CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DiscomkdGeoError as err:
            raise click.ClickException(str(err)) from err


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="discomkd-geo")
def main() -> None:
    """DisCoM-KD for Sentinel-2 / Sentinel-1 land-cover mapping.

    Train every single-modality classifier at once on paired MS/SAR data, then map land
    cover from whichever modality is available.
    """


# --------------------------------------------------------------------------- synth
@main.group(cls=_Group)
def synth() -> None:
    """Generate synthetic data in the published layouts (for demos and tests)."""


@synth.command("eurosat")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", type=click.IntRange(min=1), default=20, show_default=True,
              help="Images per class (the real dataset has 2,000-3,000).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--layout", type=click.Choice(["eurosat", "copernicus"]), default="eurosat",
              show_default=True, help="On-disk layout to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
def synth_eurosat(out: Path, per_class: int, seed: int, layout: str, overwrite: bool) -> None:
    """Write a synthetic EuroSat-MS-SAR dataset to OUT."""
    from .data.synthetic import make_eurosat

    summary = make_eurosat(out, per_class=per_class, seed=seed, layout=layout,
                           overwrite=overwrite)
    click.echo(summary)


@synth.command("scene")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.IntRange(min=64), default=512, show_default=True,
              help="MS scene width and height in pixels (10 m).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
def synth_scene(out: Path, size: int, seed: int, overwrite: bool) -> None:
    """Write a co-registered MS/SAR scene pair with its land-cover truth to OUT."""
    from .data.synthetic import make_scene

    summary = make_scene(out, size=size, seed=seed, overwrite=overwrite)
    click.echo(summary)

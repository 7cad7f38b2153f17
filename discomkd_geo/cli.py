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


# --------------------------------------------------------------------------- train
@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config (configs/eurosat_ms_sar.yaml: the paper's settings).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset root (overrides data.root).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory for checkpoints, logs, plots and metrics.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted config override, e.g. --set trainer.max_epochs=2 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty run directory.")
@click.option("--resume", is_flag=True, help="Continue from RUN/checkpoints/last.ckpt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config_path: Path | None, data_root: Path | None, run_dir: Path,
          overrides: tuple[str, ...], overwrite: bool, resume: bool, quiet: bool) -> None:
    """Train DisCoM-KD (or a baseline: --set method=mono) and test each modality."""
    from .config import load_config

    extra = (f"data.root={data_root}",) if data_root is not None else ()
    config = load_config(config_path, overrides + extra)
    from .training.train import train as run_training

    result = run_training(config, run_dir, overwrite=overwrite, resume=resume,
                          progress=not quiet)
    for m, metrics in result.metrics.items():
        click.echo(f"{m}: test weighted F1 {metrics['f1_weighted']:.4f}, "
                   f"macro F1 {metrics['f1_macro']:.4f}, OA {metrics['oa']:.4f} "
                   f"({result.checkpoints[m]})")
    click.echo(f"run directory: {result.run_dir}")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config shared by every method (its 'method' key is ignored).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset root (overrides data.root).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per method; seed i also draws the i-th random split.")
@click.option("--out", "report_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Report directory: report.md, results.json, f1.png and every run.")
@click.option("--methods", multiple=True, metavar="NAME[,NAME...]",
              help="Methods/ablations to train (default: all; kd/dkd add their teacher), "
                   "e.g. --methods mono,discomkd.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted config override for every run (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty report directory.")
@click.option("--progress", is_flag=True, help="Show Lightning's progress bars.")
def compare(config_path: Path | None, data_root: Path | None, seeds: int, report_dir: Path,
            methods: tuple[str, ...], overrides: tuple[str, ...], overwrite: bool,
            progress: bool) -> None:
    """Train DisCoM-KD, the baselines and the ablations alike; write a comparison report."""
    import sys

    from .config import load_config

    extra = (f"data.root={data_root}",) if data_root is not None else ()
    config = load_config(config_path, overrides + extra)
    from .training.compare import command_line
    from .training.compare import compare as run_comparison

    names = [n.strip() for group in methods for n in group.split(",") if n.strip()]
    run_comparison(config, report_dir, seeds=seeds, methods=names, overwrite=overwrite,
                   command=command_line(sys.argv[1:]), progress=progress, echo=click.echo)
    click.echo(f"report: {report_dir / 'report.md'}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Training checkpoint, run directory or exported predictor.")
@click.option("--modality", required=True, help="Branch to evaluate, e.g. sar.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset root (default: the one recorded in the checkpoint).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(checkpoint: Path, modality: str, data_root: Path | None, split: str,
             as_json: bool) -> None:
    """Score one modality's classifier on a dataset split, as deployed (raw input)."""
    import json

    from .training.evaluate import evaluate as run_evaluation

    metrics = run_evaluation(checkpoint, modality, data_root=data_root, split=split)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(f"{modality} {split}: weighted F1 {metrics['f1_weighted']:.4f}, "
                   f"macro F1 {metrics['f1_macro']:.4f}, OA {metrics['oa']:.4f} "
                   f"on {metrics['samples']} samples")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Training checkpoint or run directory.")
@click.option("--modality", required=True, help="Branch to export, e.g. sar.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def export(checkpoint: Path, modality: str, output: Path, overwrite: bool) -> None:
    """Write one modality's predictor to a small self-contained file for deployment."""
    from ._io import check_writable

    check_writable(output, overwrite)
    from .models.predictor import load_predictor

    predictor = load_predictor(checkpoint, modality)
    predictor.save(output, overwrite=overwrite)
    size = output.stat().st_size / 2**20
    click.echo(f"{output}: {modality} predictor, {len(predictor.info.bands)} bands "
               f"{predictor.info.bands}, {len(predictor.info.classes)} classes, {size:.1f} MiB")


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


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo_out"), show_default=True, help="Output directory.")
@click.option("--per-class", type=click.IntRange(min=4), default=150, show_default=True,
              help="Synthetic training images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Training config (default: the checkout's configs/demo.yaml).")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the demo sar.tif and truth.tif (default: tiles/demo).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted config override, e.g. --set trainer.max_epochs=2 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out: Path, per_class: int, seed: int, config_path: Path | None, tiles: Path | None,
         overrides: tuple[str, ...], overwrite: bool, quiet: bool) -> None:
    """Train on synthetic EuroSat-MS-SAR, map the demo scene from SAR alone, score it."""
    from . import demo as demo_module

    demo_module.run_demo(out, overwrite=overwrite,
                         config_path=config_path or demo_module.DEMO_CONFIG,
                         tiles=tiles or demo_module.DEMO_TILES, per_class=per_class,
                         seed=seed, overrides=overrides, progress=not quiet, echo=click.echo)

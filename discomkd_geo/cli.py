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
@click.option("-v", "--verbose", count=True,
              help="More detail: debug lines and Lightning's own messages.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """DisCoM-KD for Sentinel-2 / Sentinel-1 land-cover mapping.

    Train every single-modality classifier at once on paired MS/SAR data, then map land
    cover from whichever modality is available.
    """
    from .logs import configure

    configure(-1 if quiet else verbose)


class _ConfigKeysCommand(click.Command):
    """A command whose ``--help`` ends with every config key (generated, see docs/config.md)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the config keys after the options."""
        from .config import config_keys

        with formatter.section("Config keys (YAML or --set KEY=VALUE; docs/config.md)"):
            formatter.write_dl([(key, f"{doc} [{tp}; default: {default}]")
                                for key, tp, default, doc in config_keys()])


# --------------------------------------------------------------------------- train
def _load(config_path: Path | None, overrides: tuple[str, ...], data_root: Path | None,
          download: bool) -> Any:
    """The config of a command: file, then ``--set`` overrides, then the dedicated options."""
    from .config import load_config

    extra = (f"data.root={data_root}",) if data_root is not None else ()
    return load_config(config_path, overrides + extra + (("data.download=true",) * download))


@main.command(cls=_ConfigKeysCommand)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config (configs/eurosat_ms_sar.yaml: the paper's settings).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset root (overrides data.root).")
@click.option("--download", is_flag=True,
              help="Download EuroSat-MS-SAR into the root if missing (data.download).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory for checkpoints, logs, plots and metrics (required).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted config override, e.g. --set trainer.max_epochs=2 (repeatable).")
@click.option("--print-config", is_flag=True,
              help="Print the effective config (every key, as YAML) and exit.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty run directory.")
@click.option("--resume", is_flag=True, help="Continue from RUN/checkpoints/last.ckpt.")
@click.option("--quiet", is_flag=True, help="No progress bar or epoch lines.")
def train(config_path: Path | None, data_root: Path | None, download: bool,
          run_dir: Path | None, overrides: tuple[str, ...], print_config: bool, overwrite: bool,
          resume: bool, quiet: bool) -> None:
    """Train DisCoM-KD (or a baseline: --set method=mono) and test each modality."""
    config = _load(config_path, overrides, data_root, download)
    if print_config:
        from .config import to_yaml

        click.echo(to_yaml(config), nl=False)
        return
    if run_dir is None:
        raise click.UsageError("Missing option '--out'.")
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
@click.option("--download", is_flag=True,
              help="Download EuroSat-MS-SAR into the root if missing (data.download).")
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
def compare(config_path: Path | None, data_root: Path | None, download: bool, seeds: int,
            report_dir: Path, methods: tuple[str, ...], overrides: tuple[str, ...],
            overwrite: bool, progress: bool) -> None:
    """Train DisCoM-KD, the baselines and the ablations alike; write a comparison report."""
    import sys

    config = _load(config_path, overrides, data_root, download)
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
@click.option("--per-class", type=click.IntRange(min=4),
              help="Synthetic training images per class [150; --quick: 12].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Training config (default: the packaged configs/demo.yaml).")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the demo sar.tif and truth.tif (default: the packaged "
                   "tiles/demo).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted config override, e.g. --set trainer.max_epochs=2 (repeatable).")
@click.option("--quick", is_flag=True,
              help="Smoke run in well under a minute: 12 images per class, 1 epoch, a "
                   "narrower CNN (--per-class and --set still apply).")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo.")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
def demo(out: Path, per_class: int | None, seed: int, config_path: Path | None,
         tiles: Path | None, overrides: tuple[str, ...], quick: bool, overwrite: bool,
         quiet: bool) -> None:
    """Train on synthetic EuroSat-MS-SAR, map the demo scene from SAR alone, score it.

    The figures are the same on every machine: training and mapping run on one CPU
    thread with deterministic algorithms.
    """
    from . import demo as demo_module

    if quick:
        per_class = per_class or demo_module.QUICK_PER_CLASS
        overrides = demo_module.QUICK_OVERRIDES + overrides
    demo_module.run_demo(out, overwrite=overwrite,
                         config_path=config_path or demo_module.DEMO_CONFIG,
                         tiles=tiles or demo_module.DEMO_TILES, per_class=per_class or 150,
                         seed=seed, overrides=overrides, progress=not quiet)


# --------------------------------------------------------------------------- predict
def _band_names(values: tuple[str, ...], modalities: list[str]) -> dict[str, list[str]]:
    """``--bands`` values (``[MODALITY=]NAME,NAME,...``) as ``{modality: names}``."""
    names = {}
    for value in values:
        modality, sep, listed = value.rpartition("=")
        if not sep:
            if len(modalities) != 1:
                raise click.BadParameter("with several scenes write MODALITY=NAME,NAME,...",
                                         param_hint="--bands")
            modality = modalities[0]
        if modality not in modalities:
            raise click.BadParameter(f"no {modality!r} scene given", param_hint="--bands")
        names[modality] = [b.strip() for b in listed.split(",")]
    return names


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, path_type=Path),
              help="Training checkpoint, run directory or exported predictor.")
@click.option("--sar", type=click.Path(dir_okay=False, path_type=Path),
              help="Sentinel-1 scene (VV, VH; dB unless --sar-db).")
@click.option("--ms", type=click.Path(dir_okay=False, path_type=Path),
              help="Sentinel-2 scene (the checkpoint's MS bands).")
@click.option("--scene", type=click.Path(dir_okay=False, path_type=Path),
              help="Scene of another modality, named by --modality.")
@click.option("--stac", "stac_item", type=click.Path(dir_okay=False, path_type=Path),
              help="Local STAC Item whose assets are the S1/S2 scenes (instead of --sar/--ms; "
                   "--modality picks one of them).")
@click.option("--modality", help="Branch for --scene or --stac (or an ambiguous checkpoint).")
@click.option("--fuse", is_flag=True,
              help="With several scenes: average the branches' class probabilities.")
@click.option("--bands", multiple=True, metavar="[MODALITY=]NAME,...",
              help="Names of the raster's bands in raster order, when its band "
                   "descriptions do not name them (repeatable per modality).")
@click.option("--sar-db", is_flag=True, help="The SAR scene holds linear power: convert to dB.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply raster values by this (e.g. 10000 for reflectance).")
@click.option("--offset", type=float, default=0.0, show_default=True,
              help="Then add this (e.g. 1000 for the S2 L2A/L1C offset).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Land-cover GeoTIFF to write (.qml and .legend.json go beside it).")
@click.option("--stride", type=click.IntRange(min=1), help="Window step [patch size / 2].")
@click.option("--coarse", is_flag=True, help="One output pixel per stride cell.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Side of the chunks of output pixels (bounds memory).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker threads.")
@click.option("--scheduler", metavar="ADDRESS",
              help="dask.distributed scheduler to run on, e.g. tcp://10.0.0.5:8786.")
@click.option("--probabilities", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write per-class probabilities (one band per class) here.")
@click.option("--probabilities-dtype", type=click.Choice(["float32", "uint8"]),
              default="float32", show_default=True,
              help="uint8 stores p x 250 (nodata 255).")
@click.option("--confidence", is_flag=True,
              help="Also write the winning probability to OUTPUT_STEM.confidence.tif.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict(checkpoint: Path, sar: Path | None, ms: Path | None, scene: Path | None,
            stac_item: Path | None, modality: str | None, fuse: bool, bands: tuple[str, ...],
            sar_db: bool, scale: float, offset: float, output: Path, stride: int | None,
            coarse: bool, chunk_size: int, workers: int, scheduler: str | None,
            probabilities: Path | None, probabilities_dtype: str, confidence: bool,
            overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Map land cover from whichever modality's scene is available to a GeoTIFF."""
    from .constants import MS, SAR

    scenes: dict[str, Any] = {m: p for m, p in ((MS, ms), (SAR, sar)) if p is not None}
    source = None
    if stac_item is not None:
        if scenes or scene is not None:
            raise click.UsageError("--stac replaces --sar, --ms and --scene")
        from .inference.stac import read_item

        source = read_item(stac_item)
        scenes = {m: files[0] if len(files) == 1 else files
                  for m, files in source.paths.items() if modality in (None, m)}
        if not scenes:
            raise click.UsageError(f"{stac_item} has no {modality} asset")
        # The Item names the bands; an explicit --bands still wins.
        bands = tuple(f"{m}={','.join(source.bands[m])}" for m in scenes) + bands
    elif scene is not None:
        if modality is None:
            raise click.UsageError("--scene needs --modality")
        scenes[modality] = scene
    if not scenes:
        raise click.UsageError("give a scene: --sar, --ms or --scene with --modality")
    if len(scenes) > 1 and not fuse:
        raise click.UsageError("several scenes given: add --fuse to average the branches")
    names = _band_names(bands, list(scenes))
    from .inference.engine import predict_to_file
    from .models.predictor import load_predictor

    predictors = {m: load_predictor(checkpoint, m) for m in scenes}
    summary = predict_to_file(
        predictors, scenes, output, stride=stride, coarse=coarse, chunk_size=chunk_size,
        workers=workers, scheduler=scheduler, probabilities=probabilities,
        probabilities_dtype=probabilities_dtype, confidence=confidence, overwrite=overwrite,
        progress=not (quiet or as_json), bands=names, sar_db=(SAR,) if sar_db else (),
        scale=scale, offset=offset, stac_source=source)
    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['output']}: {summary['width']} x {summary['height']} px "
               f"({', '.join(summary['modalities'])}, stride {summary['stride']}) in "
               f"{summary['seconds']:.1f} s, {summary['pixels_per_s']:,.0f} px/s")
    mapped = max(summary["mapped_pixels"], 1)
    for name, count in summary["histogram"].items():
        if count:
            click.echo(f"  {name:<22} {count:>12,} px  {count / mapped:6.1%}")
    unmapped = summary["pixels"] - summary["mapped_pixels"]
    click.echo(f"  {'(nodata)':<22} {unmapped:>12,} px")


main.add_command(predict)


@click.group("discomkd", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def rio_discomkd(ctx: click.Context) -> None:
    """DisCoM-KD land-cover mapping (the discomkd-geo commands as a rio plugin)."""
    from .logs import configure

    configure((ctx.obj or {}).get("verbosity", 0))  # rio's own -v/-q


rio_discomkd.add_command(predict)

"""The ``discomkd-geo`` command line (and the ``rio discomkd`` plugin).

Top of the import flow: CLI -> training / inference -> models / data. Heavy libraries
(torch, rasterio, dask) are imported inside the commands, so ``--help`` is instant.
Every :class:`~discomkd_geo.errors.DiscomkdGeoError`, ``OSError`` and rasterio error
becomes a one-line ``Error: <path>: <problem>`` and a non-zero exit; ``--debug`` shows the
traceback instead.
"""

import functools
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, get_args

import click

from .constants import MS
from .data.sensors import SENSORS, SarUnits
from .errors import DiscomkdGeoError, SettingsError
from .inference.settings import Mode
from .training.map_score import MapScore

F = TypeVar("F", bound=Callable[..., Any])

#: ``click.Context.meta`` key set by ``--debug``.
_DEBUG = "discomkd_geo.debug"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _options_of_params(command: click.Command | None = None) -> dict[str, str]:
    """Python parameter -> the option that sets it on the command line.

    ``command``'s own options come first: each sets the library parameter of its name
    (``compare``'s ``--map-scenes`` sets ``MapScore``'s ``scenes``).
    """
    from .inference.settings import setting_fields

    own = {p.name: max(p.opts, key=len) for p in command.params
           if isinstance(p, click.Option) and p.name} if command else {}
    # The parameters library messages suggest that are not mapping settings: the
    # ``SceneInput`` fields (from the scene options' declarations) and ``trusted``.
    scene = {field: decls[0] for field, _, decls, _ in _SCENE_OPTION_DECLS if field}
    return {**scene, "trusted": "--trust-checkpoint",
            **{f.name: f.flag for f in setting_fields() if f.flag}, **own}


def cli_words(text: str, command: click.Command | None = None) -> str:
    """``text`` with parameters written the Python way as the command line's options.

    ``scale=10000`` becomes ``--ms-scale 10000``, ``force=True`` and ``bands=`` become
    ``--force`` and ``--bands``, and a name with an underscore (``scheduler_timeout``)
    becomes its option wherever it stands; dotted config keys are left alone. ``command``:
    the command that ran, whose own options count too (:func:`_options_of_params`).
    """
    options = _options_of_params(command)
    names = "|".join(sorted(map(re.escape, options), key=len, reverse=True))

    def option(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        value = value.strip("'\"") if value else ""
        return options[name] if value in ("", "True") else f"{options[name]} {value}"

    text = re.sub(rf"(?<![\w.-])({names})=('[^']*'|[^\s,;)]*)", option, text)
    underscored = "|".join(re.escape(n) for n in options if "_" in n)
    return re.sub(rf"(?<![\w.-])({underscored})(?![\w=])",
                  lambda m: options[m.group(1)], text)


def error_message(err: Exception, command: click.Command | None = None) -> str | None:
    """The one-line message the CLI prints for ``err``; ``None``: not an error it reports.

    The package's errors carry their message, with the parameters they suggest written
    as options (:func:`cli_words`; ``command``: the command that raised it); an
    ``OSError`` (rasterio's I/O errors are ones) is told as ``<path>: <problem>``; other
    rasterio errors by their first line.
    """
    if isinstance(err, SettingsError):
        option = _options_of_params(command).get(err.param, err.param)
        return f"{option}: {cli_words(err.problem, command)}"
    if isinstance(err, DiscomkdGeoError):
        return cli_words(str(err), command)
    if isinstance(err, OSError):
        if err.filename is not None and err.strerror:
            return f"{os.fsdecode(err.filename)}: {err.strerror}"
        return _first_line(str(err)) or type(err).__name__
    if type(err).__module__.split(".")[0] == "rasterio":
        return _first_line(str(err)) or type(err).__name__
    return None


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # ctx.meta is shared by nested commands: a sub-group's unset flag must not clear it.
    ctx.meta[_DEBUG] = ctx.meta.get(_DEBUG, False) or value


class _Group(click.Group):
    """Click group with ``--debug`` that turns errors into one-line CLI errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
            help="Show the full traceback of an error instead of one line."))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            message = None if ctx.meta.get(_DEBUG) else error_message(err, command)
            if message is None:
                raise
            raise click.ClickException(message) from err


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
    _interruptible()


def _interruptible() -> None:
    """Stop on SIGINT even when started with it ignored.

    A shell script's background jobs, and the processes such jobs start, inherit SIGINT
    ignored, and Python then never raises KeyboardInterrupt: an interrupt sent to this
    process (the QGIS plugin's Cancel sends one) went unheeded, and the run finished and
    wrote its outputs. Python's own handler stops it instead, its temporaries removed.
    """
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _ConfigKeysCommand(click.Command):
    """A command whose ``--help`` ends with every config key (generated, see docs/config.md)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the config keys after the options."""
        from .config import config_keys

        with formatter.section("Config keys (YAML or --set KEY=VALUE; docs/config.md)"):
            formatter.write_dl([(key, f"{doc} [{tp}; default: {default}]")
                                for key, tp, default, doc in config_keys()])


# --------------------------------------------------------------------------- options
# Each option shared by several commands is declared once here; the commands pass the
# help text where its meaning differs.
def _config_option(help: str) -> Callable[[F], F]:
    return click.option("--config", "config_path",
                        type=click.Path(dir_okay=False, path_type=Path), help=help)


def _data_root_option(help: str = "Dataset root (overrides data.root).") -> Callable[[F], F]:
    return click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
                        help=help)


_download_option = click.option(
    "--download", is_flag=True,
    help="Download EuroSat-MS-SAR into the root if missing (data.download).")


def _set_option(help: str = "Dotted config override, e.g. --set trainer.max_epochs=2 "
                            "(repeatable).") -> Callable[[F], F]:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def _overwrite_option(help: str) -> Callable[[F], F]:
    return click.option("--overwrite", is_flag=True, help=help)


def _seed_option(help: str) -> Callable[[F], F]:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def _checkpoint_option(help: str = "Training checkpoint, run directory or exported "
                                   "predictor (.pt, or .onnx: run by onnxruntime, without "
                                   "PyTorch).", exists: bool = False) -> Callable[[F], F]:
    checkpoint = click.option("--checkpoint", required=True,
                              type=click.Path(exists=exists, path_type=Path), help=help)
    # Every command that reads a checkpoint can be told to trust it (models/_files.py).
    trust = click.option("--trust-checkpoint", "trusted", is_flag=True,
                         help="Load a checkpoint whose pickle would run code (refused by "
                              "default): only for files you made yourself.")
    return lambda command: checkpoint(trust(command))


def _json_option(help: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def _output_option(help: str | None = None, required: bool = True,
                   directory: bool = False) -> Callable[[F], F]:
    """``-o/--output``: a file, or with ``directory`` a directory."""
    return click.option("-o", "--output", required=required,
                        type=click.Path(dir_okay=directory, file_okay=not directory,
                                        path_type=Path), help=help)


def _out_option(dest: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    """``--out``, a directory; ``dest`` names the command's parameter."""
    return click.option("--out", dest, type=click.Path(file_okay=False, path_type=Path),
                        help=help, **kwargs)


def _modality_option(help: str, required: bool = False,
                     multiple: bool = False) -> Callable[[F], F]:
    """``--modality``: a branch, or with ``multiple`` the branches (``modalities``)."""
    dest = ("modalities",) if multiple else ()
    return click.option("--modality", *dest, required=required, multiple=multiple, help=help)


def _resume_option(help: str) -> Callable[[F], F]:
    return click.option("--resume", is_flag=True, help=help)


def _quick_option(help: str) -> Callable[[F], F]:
    return click.option("--quick", is_flag=True, help=help)


def _per_class_option(help: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option("--per-class", help=help, **kwargs)


def _no_progress_option(help: str) -> Callable[[F], F]:
    return click.option("--no-progress", is_flag=True, help=help)


# --------------------------------------------------------------------------- train
def _load(config_path: Path | None, overrides: tuple[str, ...], data_root: Path | None,
          download: bool) -> Any:
    """The config of a command: file, then ``--set`` overrides, then the dedicated options."""
    from .config import load_config

    extra = (f"data.root={data_root}",) if data_root is not None else ()
    return load_config(config_path, overrides + extra + (("data.download=true",) * download))


@main.command(cls=_ConfigKeysCommand)
@_config_option("YAML config (configs/eurosat_ms_sar.yaml: the paper's settings).")
@_data_root_option()
@_download_option
@_out_option("run_dir", "Run directory for checkpoints, logs, plots and metrics (required).")
@_set_option()
@click.option("--print-config", is_flag=True,
              help="Print the effective config (every key, as YAML) and exit.")
@_overwrite_option("Replace a non-empty run directory.")
@_resume_option("Continue an interrupted run from its latest epoch (RUN/checkpoints/"
                "last.ckpt); a finished run is reported as it is.")
@_no_progress_option("No progress bar or epoch lines.")
def train(config_path: Path | None, data_root: Path | None, download: bool,
          run_dir: Path | None, overrides: tuple[str, ...], print_config: bool, overwrite: bool,
          resume: bool, no_progress: bool) -> None:
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
                          progress=not no_progress, echo=click.echo)
    if not result.reporter:  # another process of a distributed run: rank 0 reports
        return
    for m, metrics in result.metrics.items():
        click.echo(f"{m}: test weighted F1 {metrics['f1_weighted']:.4f}, "
                   f"macro F1 {metrics['f1_macro']:.4f}, OA {metrics['oa']:.4f} "
                   f"({result.checkpoints[m]})")
    click.echo(f"run directory: {result.run_dir}")


@main.command()
@_config_option("YAML config shared by every method (its 'method' key is ignored).")
@_data_root_option()
@_download_option
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Paired seeds per method; seed i draws the i-th split and initialisation.")
@click.option("--lrs", default="3e-4,1e-3,3e-3", show_default=True, metavar="LR[,LR...]",
              help="Learning-rate grid, chosen per method on the first seed's validation.")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="Early stopping: epochs without validation improvement.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs trained at once, each in its own process with one torch thread.")
@_out_option("report_dir", "Report directory: report.md, results.json, plots and every run.",
             required=True)
@click.option("--methods", multiple=True, metavar="NAME[,NAME...]",
              help="Methods/ablations to train (default: all but dkd; kd/dkd add their "
                   "teacher), e.g. --methods mono,discomkd.")
@_set_option("Dotted config override for every run (repeatable).")
@_quick_option("Small end-to-end check: 2 seeds, 2 rates, 2 epochs, tiny CNN, mono and "
               "discomkd (explicit options still apply on top).")
@click.option("--map-scenes", "scenes", type=click.IntRange(min=0), default=MapScore.scenes,
              show_default=True,
              help="Also score every run's SAR-only map of this many held-out synthetic "
                   "scenes (seeds 101, 102, ...; made once under OUT/scenes): map OA and "
                   "edge OA per method and paired by seed (0: no map score).")
@click.option("--map-mode", "mode", type=click.Choice(get_args(Mode)), default=MapScore.mode,
              show_default=True,
              help=f"How the map score maps: as predict does by default (auto: pixel for "
                   f"runs with decoders, else windows at stride {MapScore.stride}), windows, "
                   "dense, or pixel (a run without a per-pixel decoder is first given one, "
                   "trained on mosaics of its training split).")
@click.option("--map-size", "size", type=click.IntRange(min=64), default=MapScore.size,
              hidden=True,
              help="Side of the held-out scenes in pixels (tests use small ones).")
@click.option("--regenerate", is_flag=True,
              help="Only rewrite OUT's report and plots from OUT/results.json.")
@_overwrite_option("Replace a non-empty report directory.")
@_resume_option("Keep the runs OUT/results.json records and train only the missing ones.")
@click.pass_context
def compare(ctx: click.Context, config_path: Path | None, data_root: Path | None,
            download: bool, seeds: int, lrs: str, patience: int, jobs: int, report_dir: Path,
            methods: tuple[str, ...], overrides: tuple[str, ...], quick: bool,
            scenes: int, mode: Mode, size: int, regenerate: bool,
            overwrite: bool, resume: bool) -> None:
    """Train DisCoM-KD, the baselines and the ablations alike; write a comparison report.

    Protocol: learning rate per method chosen on validation, early stopping, paired seeds,
    paired differences with 95% intervals (see discomkd_geo.training.compare).
    """
    import sys

    from .training import compare as comparison

    if regenerate:
        comparison.regenerate(report_dir)
        click.echo(f"report: {report_dir / 'report.md'}")
        return
    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    names = [n.strip() for group in methods for n in group.split(",") if n.strip()]
    try:
        grid = [float(v) for v in lrs.split(",") if v.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated numbers, got {lrs!r}",
                                 param_hint="'--lrs'") from err
    if quick:
        q = comparison.QUICK
        overrides = (*q["overrides"], *overrides)
        seeds = seeds if given("seeds") else q["seeds"]
        grid = grid if given("lrs") else list(q["lrs"])
        patience = patience if given("patience") else q["patience"]
        names = names or list(q["methods"])
    config = _load(config_path, overrides, data_root, download)
    comparison.compare(config, report_dir, seeds=seeds, methods=names, lrs=grid,
                       patience=patience, jobs=jobs, overwrite=overwrite, resume=resume,
                       command=comparison.command_line(sys.argv[1:]),
                       map_score=MapScore(scenes, mode, size=size),
                       echo=click.echo)
    click.echo(f"report: {report_dir / 'report.md'}")


@main.command()
@_checkpoint_option()
@_modality_option("Branch to evaluate, e.g. sar.", required=True)
@_data_root_option("Dataset root (default: the one recorded in the checkpoint).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@_json_option("Print the metrics as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the reliability diagram (before and after calibration) into this "
                   "PNG  [default: RUN/plots/reliability_<modality>_<split>.png for a run "
                   "directory, else none].")
@_overwrite_option("Replace the --plot file if it exists.")
def evaluate(checkpoint: Path, trusted: bool, modality: str, data_root: Path | None,
             split: str, as_json: bool, plot: Path | None, overwrite: bool) -> None:
    """Score one modality's classifier on a dataset split, as deployed (raw input).

    Weighted and macro F1, overall accuracy, and the expected calibration error (ECE, 15
    confidence bins) of its probabilities before and after its calibration temperature.
    """
    import json

    from .files import check_outputs

    if plot is not None:
        check_outputs({"plot": plot}, overwrite)
    from .training.evaluate import evaluate as run_evaluation

    if plot is None and checkpoint.is_dir():  # the run's own figure: redrawn every time
        from .training.temperature_fit import reliability_plot

        plot, overwrite = reliability_plot(checkpoint, modality, split), True
        plot.parent.mkdir(exist_ok=True)
    metrics = run_evaluation(checkpoint, modality, data_root=data_root, split=split,
                             trusted=trusted, plot=plot, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    click.echo(f"{modality} {split}: weighted F1 {metrics['f1_weighted']:.4f}, "
               f"macro F1 {metrics['f1_macro']:.4f}, OA {metrics['oa']:.4f} "
               f"on {metrics['samples']} samples")
    t = metrics["temperature"]
    calibrated = "not calibrated" if t is None else f"temperature {t:.4g}"
    click.echo(f"calibration ({calibrated}): ECE {metrics['ece_before']:.4f} before, "
               f"{metrics['ece_after']:.4f} after" + (f"; reliability diagram: {plot}"
                                                       if plot is not None else ""))


@main.command()
@_checkpoint_option("Training checkpoint or run directory.")
@_modality_option("Branch to export, e.g. sar.", required=True)
@_output_option()
@click.option("--format", "fmt", type=click.Choice(["torch", "onnx", "deepness"]),
              help="torch: a .pt file for load_predictor; onnx: an ONNX graph taking raw "
                   "patches (normalisation inside), runnable without PyTorch, plus, for a "
                   "branch with a per-pixel decoder, the graph of mode pixel (in the same "
                   "file: predict then maps per pixel, as with the torch branch); deepness: "
                   "ONNX with a per-pixel output for the QGIS plugin Deepness (the decoder's "
                   "over each tile when the branch has one, else the window's).  "
                   "[default: onnx for an .onnx OUTPUT, else torch]")
@_overwrite_option("Replace OUTPUT if it exists.")
def export(checkpoint: Path, trusted: bool, modality: str, output: Path, fmt: str | None,
           overwrite: bool) -> None:
    """Write one modality's predictor to a small self-contained file for deployment."""
    from .files import check_outputs

    # Before the checkpoint is loaded: an output that cannot be written fails at once.
    check_outputs({"predictor": output}, overwrite)
    from .models.loader import is_onnx, load_predictor

    if is_onnx(checkpoint):
        raise click.BadParameter(f"{checkpoint}: an ONNX model is exported already; export "
                                 "from its training checkpoint or run", param_hint="CHECKPOINT")
    # The loader every command uses: a run's bare best checkpoint comes with its decoder.
    predictor = load_predictor(checkpoint, modality, trusted=trusted)
    fmt = fmt or ("onnx" if output.suffix.lower() == ".onnx" else "torch")
    if fmt == "torch":
        predictor.save(output, overwrite=overwrite)
    else:
        from .models.onnx_export import export_onnx

        export_onnx(predictor, output, per_pixel=fmt == "deepness", overwrite=overwrite)
    size = output.stat().st_size / 2**20
    click.echo(f"{output}: {modality} predictor ({fmt}), {len(predictor.info.bands)} bands "
               f"{predictor.info.bands}, {len(predictor.info.classes)} classes, {size:.1f} MiB")


@main.command("fit-decoder")
@click.option("--run", "run_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Training run directory (train --out).")
@_modality_option("Branch to give a decoder (repeatable) [default: every branch that maps "
                  "from one modality].", multiple=True)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True,
              help="Passes over the run's training split (as mosaics, and as patches). "
                   "More help less and less: on the demo's 1,050 training pairs an "
                   "earlier demo model's SAR map of the demo scene scored OA 0.770 (4), "
                   "0.789 (8), 0.800 (24) and 0.814 (48); today's scores 0.798-0.815 (8; "
                   "across machines and CPU capabilities) and 0.799 (16, one machine).")
@_overwrite_option("Replace the run's existing decoders.")
def fit_decoder(run_dir: Path, modalities: tuple[str, ...], epochs: int,
                overwrite: bool) -> None:
    """Give a trained run's branches a per-pixel decoder (maps then use mode pixel).

    The branches stay frozen (their patch scores are unchanged); each decoder learns the
    label maps of mosaics of the run's training split and its isolated patches, and is
    saved in RUN/decoders/, which the run directory then loads. What train does with
    model.decoder_epochs.
    """
    from .training.decoder_fit import fit_decoders, run_modalities

    written = fit_decoders(run_dir, None, list(modalities) or run_modalities(run_dir),
                           epochs=epochs, overwrite=overwrite)
    for modality, path in written.items():
        click.echo(f"{path}: {modality} branch with a per-pixel decoder ({epochs} epochs)")


@main.command("fit-calibration")
@click.argument("run_dir", metavar="RUN",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@_modality_option("Branch to calibrate (repeatable)  [default: every branch that maps from "
                  "one modality].", multiple=True)
@_data_root_option("Dataset root (default: the one recorded in the run).")
@_overwrite_option("Fit again branches that are calibrated already.")
@_json_option("Print each branch's calibration as JSON.")
def fit_calibration(run_dir: Path, modalities: tuple[str, ...], data_root: Path | None,
                    overwrite: bool, as_json: bool) -> None:
    """Calibrate a trained run's branches: one temperature each, on the validation split.

    Temperature scaling (Guo et al., 2017): each branch's logits are divided by one T > 0
    that minimises the negative log-likelihood of the validation split (a split the
    branch classifies without error: the T whose mean confidence is (n + 1) / (n + 2),
    the rule of succession); every class stays the same, the confidences change. T is
    written into the run's checkpoints and decoders, so predict, export and evaluate use
    it. What train does at the end of every run; reliability diagrams go to RUN/plots/.
    """
    import json

    from .training.temperature_fit import calibrate_run

    results = calibrate_run(run_dir, list(modalities) or None, data_root, overwrite)
    if as_json:
        click.echo(json.dumps({m: r.to_dict() for m, r in results.items()}, indent=2))
        return
    for m, r in results.items():
        how = " (rule of succession)" if r.method == "succession" else ""
        click.echo(f"{m}: temperature {r.temperature:.4g}{how}, validation ECE "
                   f"{r.ece_before:.4f} -> {r.ece_after:.4f} ({r.samples} images)")


# --------------------------------------------------------------------------- synth
@main.group(cls=_Group)
def synth() -> None:
    """Generate synthetic data in the published layouts (for demos and tests)."""


@synth.command("eurosat")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@_per_class_option("Images per class (the real dataset has 2,000-3,000).",
                   type=click.IntRange(min=1), default=20, show_default=True)
@_seed_option("Random seed of the generated images.")
@click.option("--layout", type=click.Choice(["eurosat", "copernicus"]), default="eurosat",
              show_default=True, help="On-disk layout to write.")
@_overwrite_option("Replace OUT if it exists and is not empty.")
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
@_seed_option("Random seed of the scene (parcels, classes, textures).")
@click.option("--cloud-cover", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the MS scene under clouds and cirrus (with their shadows); "
                   "their truth masks and an L2A-style scl.tif go beside it.")
@_overwrite_option("Replace OUT if it exists and is not empty.")
def synth_scene(out: Path, size: int, seed: int, cloud_cover: float, overwrite: bool) -> None:
    """Write a co-registered MS/SAR scene pair with its land-cover truth to OUT."""
    from .data.synthetic import make_scene

    summary = make_scene(out, size=size, seed=seed, overwrite=overwrite,
                         cloud_cover=cloud_cover)
    click.echo(summary)


# --------------------------------------------------------------------------- demo
@main.command()
@_out_option("out", "Output directory.", default=Path("demo_out"), show_default=True)
@_per_class_option("Synthetic training images per class [150; --quick: 12].",
                   type=click.IntRange(min=4))
@_seed_option("Seed of the synthetic training set and of training.")
@_config_option("Training config (default: the packaged configs/demo.yaml).")
@click.option("--tiles", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the demo sar.tif and truth.tif (default: the packaged "
                   "tiles/demo).")
@_set_option()
@_quick_option("Smoke run in well under a minute: 12 images per class, 1 epoch, a narrower "
               "CNN (--per-class and --set still apply).")
@_overwrite_option("Replace the outputs of an earlier demo.")
@_no_progress_option("No progress bars or epoch lines.")
def demo(out: Path, per_class: int | None, seed: int, config_path: Path | None,
         tiles: Path | None, overrides: tuple[str, ...], quick: bool, overwrite: bool,
         no_progress: bool) -> None:
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
                         seed=seed, overrides=overrides, progress=not no_progress)


# --------------------------------------------------------------------------- predict
def _per_modality(values: tuple[str, ...], modalities: list[str], option: str
                  ) -> dict[str, str]:
    """Values of a per-modality option (``[MODALITY=]VALUE``) as ``{modality: value}``."""
    given = {}
    for value in values:
        modality, sep, text = value.partition("=")
        if not sep:
            if len(modalities) != 1:
                raise click.BadParameter("with several scenes write MODALITY=VALUE",
                                         param_hint=option)
            modality, text = modalities[0], value
        if modality not in modalities:
            raise click.BadParameter(f"no {modality!r} scene given", param_hint=option)
        given[modality] = text
    return given


class _ScenePath(click.ParamType):
    """A scene: a local path (as ``Path``) or a URL kept as given (``Path`` folds ``//``)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str | Path:
        """``https://``, ``s3://`` and ``/vsi...`` stay strings; anything else is a Path."""
        text = os.fspath(value)
        return text if "://" in text or text.startswith("/vsi") else Path(text)


#: The type of every scene option (local files, directories or URLs).
_SCENE = _ScenePath()


_MS_OFFSET_HELP = (
    "Then add this to the MS values. Sentinel-2 L1C and L2A digital numbers of processing "
    "baseline 04.00 and later (products from 25 January 2022 on) carry +1000: reflectance = "
    "(DN - 1000) / 10000, so pass -1000 to match models trained on earlier products such as "
    "EuroSAT. L2A example: --ms-offset -1000 for a 2023 L2A .SAFE; --ms-scale 10000 for L2A "
    "surface reflectance already divided by 10000 (0-1).")


#: The options that describe the scenes, shared by ``predict`` and ``inspect``, declared
#: once: ``(SceneInput field the option sets, or None; its _SceneOptions attribute; the
#: option's names; its click arguments)``. Library messages about a field name its option.
_SCENE_OPTION_DECLS: list[tuple[str | None, str, tuple[str, ...], dict[str, Any]]] = [
    ("bands", "bands", ("--bands",), dict(
        multiple=True, metavar="[MODALITY=]NAME,...",
        help="Names of the input's bands in order (files in the order given), when band "
             "descriptions and file names do not name them (repeatable per modality).")),
    ("sar_units", "sar_units", ("--sar-units",), dict(
        type=click.Choice(get_args(SarUnits)),
        help="How the SAR input stores backscatter [default: from ASF HyP3 RTC file names, "
             "else db]. RTC products on public catalogues are gamma0 linear power.")),
    ("scale", "ms_scale", ("--ms-scale",), dict(
        type=float, default=1.0, show_default=True,
        help="Multiply the MS values by this: 10000 for reflectance 0-1.")),
    ("offset", "ms_offset", ("--ms-offset",), dict(
        type=float, default=0.0, show_default=True, help=_MS_OFFSET_HELP)),
    ("crs", "crs", ("--crs",), dict(
        metavar="CRS",
        help="CRS to warp rasters georeferenced only by GCPs or RPCs to, e.g. EPSG:32631 "
             "[default: UTM zone of the scene centre].")),
    ("nodata", "nodata", ("--nodata",), dict(
        multiple=True, metavar="[MODALITY=]VALUE",
        help="The value that marks missing pixels in the scene (in any band), instead of "
             "its files' nodata tags: for exports that fill outside the swath without "
             "tagging it (SNAP, Earth Engine: --nodata 0); repeatable per modality.")),
    ("mask", "ms_mask", ("--ms-mask",), dict(
        metavar="FILE|scl|auto|none",
        help="MS pixels to treat as nodata (clouds, shadows): a mask raster on any "
             "overlapping grid (Sentinel-2 SCL, Fmask codes, or 0/1 with 1 = unavailable), "
             "'scl' for the SCL of the L2A .SAFE or STAC Item, 'auto' for cloud "
             "detection by s2cloudless on an L1C scene (the 'clouds' extra), or 'none' for "
             "no mask [default: 'scl' for an L2A .SAFE or a STAC Item with an scl asset, "
             "else none].")),
    ("mask_kind", "ms_mask_kind", ("--ms-mask-kind",), dict(
        type=click.Choice(SENSORS[MS].mask_files),
        help="What --ms-mask FILE holds [default: scl or fmask when its name says so, else "
             "binary 0/1].")),
    ("mask_codes", "ms_mask_codes", ("--ms-mask-codes",), dict(
        metavar="CODE,...",
        help="Codes of --ms-mask that mark unavailable pixels [default: SCL 3,8,9,10 "
             "(shadow, cloud, cirrus); Fmask 2,4; binary 1].")),
    ("mask_resolution", "ms_mask_resolution", ("--ms-mask-resolution",), dict(
        type=click.FloatRange(min=0, min_open=True), metavar="METRES",
        help="Pixel size at which --ms-mask auto detects clouds, a whole multiple of the "
             "map's: 60 detects on 6x6 blocks of a 10 m map, 10-20 times faster in our "
             "runs, with a coarser mask (mean IoU 0.84 instead of 0.88 on validation "
             "scenes) [default: the map's pixels].")),
    (None, "sar_mask", ("--sar-mask",), dict(
        type=_SCENE, metavar="FILE",
        help="SAR pixels to treat as nodata: a 0/1 raster (1 = unavailable) on any "
             "overlapping grid.")),
]


@dataclass(frozen=True)
class _SceneOptions:
    """The values of the scene options (:data:`_SCENE_OPTION_DECLS`) of one command."""

    bands: tuple[str, ...] = ()
    sar_units: str | None = None
    ms_scale: float = 1.0
    ms_offset: float = 0.0
    crs: str | None = None
    nodata: tuple[str, ...] = ()
    ms_mask: str | None = None
    ms_mask_kind: str | None = None
    ms_mask_codes: str | None = None
    ms_mask_resolution: float | None = None
    sar_mask: Path | str | None = None

    def masks(self) -> dict[str, dict[str, Any]]:
        """The ``SceneInput`` mask fields of the mask options, per modality."""
        from .constants import MS, SAR

        codes = None
        if self.ms_mask_codes is not None:
            try:
                codes = tuple(int(c) for c in self.ms_mask_codes.split(","))
            except ValueError as err:
                raise click.BadParameter(f"{self.ms_mask_codes!r} is not a list of integer "
                                         "codes", param_hint="--ms-mask-codes") from err
        masks = {}
        if any(value is not None for value in (self.ms_mask, self.ms_mask_kind, codes,
                                               self.ms_mask_resolution)):
            masks[MS] = {"mask": self.ms_mask, "mask_kind": self.ms_mask_kind,
                         "mask_codes": codes, "mask_resolution": self.ms_mask_resolution}
        if self.sar_mask is not None:
            masks[SAR] = {"mask": self.sar_mask, "mask_kind": "binary"}
        return masks

    def inputs(self, scenes: dict[str, list[Path | str]]) -> dict[str, Any]:
        """The per-modality :class:`~discomkd_geo.inference.io.SceneInput` of ``scenes``."""
        from .constants import MS, SAR
        from .inference.io import SceneInput

        masks = self.masks()
        if missing := sorted(set(masks) - set(scenes)):
            raise click.UsageError(f"--{missing[0]}-mask given without a {missing[0]} scene")
        names = _per_modality(self.bands, list(scenes), "--bands")
        fills = _per_modality(self.nodata, list(scenes), "--nodata")
        inputs = {}
        for modality, paths in scenes.items():
            scale, offset = (self.ms_scale, self.ms_offset) if modality == MS else (1.0, 0.0)
            try:
                fill = float(fills[modality]) if modality in fills else None
            except ValueError as err:
                raise click.BadParameter(f"{fills[modality]!r} is not a number",
                                         param_hint="--nodata") from err
            listed = ([b.strip() for b in names[modality].split(",")]
                      if modality in names else None)
            inputs[modality] = SceneInput(paths, listed,
                                          self.sar_units if modality == SAR else None,
                                          scale, offset, self.crs, fill,
                                          **masks.get(modality, {}))
        return inputs


def _input_options(command: F) -> F:
    """Add the scene options; the command receives their values as one ``scene_options``."""
    names = [attribute for _, attribute, _, _ in _SCENE_OPTION_DECLS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        return command(*args, scene_options=_SceneOptions(**values), **kwargs)

    decorated: Any = wrapper
    for _, attribute, decls, kwargs in reversed(_SCENE_OPTION_DECLS):
        decorated = click.option(*decls, attribute, **kwargs)(decorated)
    return decorated


def _click_type(f: Any) -> dict[str, Any]:
    """The ``click.option`` arguments of a mapping setting (see ``inference/settings.py``)."""
    import types
    import typing

    union = typing.get_origin(f.type) in (typing.Union, types.UnionType)
    kinds = [a for a in typing.get_args(f.type) if a is not type(None)] if union else [f.type]
    bounds = {"min": f.minimum, "max": f.maximum}
    if bool in kinds:
        return {"is_flag": True}
    if typing.get_origin(kinds[0]) is typing.Literal:
        return {"type": click.Choice(typing.get_args(kinds[0])), "show_default": True}
    if any(typing.get_origin(k) is os.PathLike for k in kinds):
        return {"type": click.Path(dir_okay=False, path_type=Path), "metavar": f.metavar}
    if kinds == [int]:
        return {"type": click.IntRange(**bounds), "show_default": f.default is not None}
    if kinds == [float]:
        return {"type": click.FloatRange(**bounds, min_open=f.exclusive_minimum),
                "show_default": f.default is not None}
    return {"type": str, "metavar": f.metavar}


def _setting_options(command: F) -> F:
    """One option per mapping setting, generated from the settings dataclasses."""
    from .inference.settings import setting_fields

    for f in reversed(setting_fields()):
        if f.flag is not None:
            command = click.option(f.flag, f.name, default=f.default, help=f.help,
                                   **_click_type(f))(command)
    return command


def _map_settings(values: dict[str, Any]) -> Any:
    """The :class:`~discomkd_geo.inference.settings.MapSettings` of the generated options."""
    from .inference.settings import MapSettings, setting_fields

    return MapSettings.of(**{f.name: values[f.name] for f in setting_fields() if f.flag})


@click.command()
@_checkpoint_option(exists=True)
@click.option("--sar", multiple=True, type=_SCENE,
              help="Sentinel-1 scene: a VV/VH stack, or one file per polarisation (repeat "
                   "--sar; e.g. the *_VV.tif and *_VH.tif of an RTC product), their "
                   "directory, or https:// or s3:// URLs (read by range requests). A raw "
                   ".SAFE is refused: calibrate and terrain-correct first.")
@click.option("--sar-vv", type=_SCENE,
              help="The VV file of a scene given as one file per polarisation.")
@click.option("--sar-vh", type=_SCENE,
              help="The VH file (with --sar-vv).")
@click.option("--ms", multiple=True, type=_SCENE,
              help="Sentinel-2 scene: a stack, one file per band (repeat --ms), or a "
                   "directory of band files such as an L1C/L2A .SAFE (finest resolution "
                   "of each band; every band is resampled to the model's pixel size).")
@click.option("--scene", multiple=True, type=_SCENE,
              help="Scene of another modality, named by --modality.")
@click.option("--stac", "stac_item", type=click.Path(dir_okay=False, path_type=Path),
              help="Local STAC Item whose assets are the S1/S2 scenes (instead of --sar/--ms; "
                   "--modality picks one of them).")
@_modality_option("Branch for --scene or --stac (or an ambiguous checkpoint).")
@click.option("--fuse", is_flag=True,
              help="Map from every scene given, each pixel from the best evidence there: "
                   "the --fusion of the branches where all are valid, the one valid branch "
                   "elsewhere (what several scenes do anyway; --modality maps one branch).")
@_input_options
@_output_option("Land-cover GeoTIFF to write (.qml and .legend.json go beside it).")
@_setting_options
@_no_progress_option("No progress bar.")
@_json_option("Print the summary as JSON.")
def predict(checkpoint: Path, trusted: bool, sar: tuple[Path | str, ...],
            sar_vv: Path | str | None, sar_vh: Path | str | None, ms: tuple[Path | str, ...],
            scene: tuple[Path | str, ...],
            stac_item: Path | None, modality: str | None, fuse: bool,
            scene_options: _SceneOptions, output: Path, no_progress: bool, as_json: bool,
            **settings: Any) -> None:
    """Map land cover from whichever modality's scene is available to a GeoTIFF.

    Every scene is first checked against the model's training data (units, scale, band
    order; see the inspect command). Worked examples: docs/tutorials/03-sentinel1-scene.md.
    The mapping options are those of discomkd_geo.inference.settings.MapSettings.
    """
    from .constants import MS, SAR

    scenes: dict[str, list[Path | str]] = {}
    source = None
    if stac_item is not None:
        if ms or sar or sar_vv or sar_vh or scene:
            raise click.UsageError("--stac replaces --sar, --ms and --scene")
        from .inference.stac import read_item

        source = read_item(stac_item)
        scenes = {m: [_SCENE.convert(f, None, None) for f in files]
                  for m, files in source.paths.items() if modality in (None, m)}
        if not scenes:
            raise click.UsageError(f"{stac_item} has no {modality} asset")
        # The Item names the bands; an explicit --bands still wins.
        scene_options = replace(scene_options, bands=tuple(
            f"{m}={','.join(source.bands[m])}" for m in scenes) + scene_options.bands)
        if scene_options.ms_mask == "scl" and source.scl is not None:  # the Item's L2A SCL
            scene_options = replace(scene_options, ms_mask=source.scl,
                                    ms_mask_kind=scene_options.ms_mask_kind or "scl")
        elif source.scl is not None and MS in scenes and MS not in scene_options.masks():
            # No MS mask option: the Item's SCL by default, as an L2A .SAFE's (masks.py).
            from .inference.masks import note_default_scl

            note_default_scl(str(stac_item), source.scl)
            scene_options = replace(scene_options, ms_mask=source.scl, ms_mask_kind="scl")
    if ms:
        scenes[MS] = list(ms)
    if sar_vv or sar_vh:
        if not (sar_vv and sar_vh) or sar:
            raise click.UsageError("give both --sar-vv and --sar-vh (and no --sar)")
        scenes[SAR] = [sar_vv, sar_vh]
        scene_options = replace(scene_options, bands=(*scene_options.bands, f"{SAR}=VV,VH"))
    elif sar:
        scenes[SAR] = list(sar)
    if scene:
        if modality is None:
            raise click.UsageError("--scene needs --modality")
        scenes[modality] = list(scene)
    if not scenes:
        raise click.UsageError("give a scene: --sar, --ms or --scene with --modality")
    if modality is not None and not scene and len(scenes) > 1:
        if fuse:
            raise click.UsageError("--modality maps one branch; --fuse maps them all")
        if modality not in scenes:
            raise click.UsageError(f"no {modality} scene given")
        scenes = {modality: scenes[modality]}
    inputs = scene_options.inputs(scenes)
    from .inference.engine import predict_to_file
    from .models.loader import load_predictor

    options = _map_settings(settings)  # checked before the checkpoint is loaded
    predictors = {m: load_predictor(checkpoint, m, trusted=trusted) for m in scenes}
    summary = predict_to_file(predictors, inputs, output, options,
                              progress=not (no_progress or as_json), stac_source=source)
    if as_json:
        import json

        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    for check in summary.checks.values():
        if check.forced:
            click.echo(f"warning: mapped with --force: {cli_words(check.problems[0])}",
                       err=True)
    click.echo(f"{summary.output}: {summary.width} x {summary.height} px "
               f"({', '.join(summary.modalities)}, stride {summary.stride}) in "
               f"{summary.seconds:.1f} s, {summary.pixels_per_s:,.0f} px/s")
    mapped = max(summary.mapped_pixels, 1)
    for name, count in summary.histogram.items():
        if count:
            click.echo(f"  {name:<22} {count:>12,} px  {count / mapped:6.1%}")
    click.echo(f"  {'(nodata)':<22} {summary.pixels - summary.mapped_pixels:>12,} px")
    if summary.fusion is not None:
        shares = ", ".join(f"{name} {share:.1%}" for name, share in summary.sources.items()
                           if share)
        click.echo(f"decided by ({summary.fusion} fusion): {shares}")
    if summary.computed_chunks < summary.chunks:
        click.echo(f"area of interest: {summary.computed_chunks} of {summary.chunks} chunks "
                   "read and classified")
    if summary.vector:
        click.echo(f"polygons: {summary.vector}")


main.add_command(predict)


# --------------------------------------------------------------------------- inspect
@main.command()
@click.argument("scene", nargs=-1, required=True, type=_SCENE)
@_checkpoint_option(exists=True)
@_modality_option("Branch the scene is for (needed for training checkpoints).")
@_input_options
@_json_option("Print the figures as JSON.")
def inspect(scene: tuple[Path | str, ...], checkpoint: Path, trusted: bool,
            modality: str | None, scene_options: _SceneOptions, as_json: bool) -> None:
    """Compare a scene's bands with the model's training data, as predict checks them.

    SCENE is one raster, one file per band or polarisation, or a directory of them.
    Prints per band the unit guess, the scene's and the training data's 2nd/50th/98th
    percentiles and the verdict, then whether predict would map the scene.
    """
    from .inference.checks import check_scene
    from .inference.io import open_readers
    from .models.loader import load_predictor

    predictor = load_predictor(checkpoint, modality, trusted=trusted)
    modality = predictor.info.modality
    inputs = scene_options.inputs({modality: list(scene)})
    _, readers = open_readers(inputs, {modality: predictor.info})
    check = check_scene(predictor, readers[modality], modality)
    if as_json:
        import json

        click.echo(json.dumps(check.to_dict(), indent=2))
        return
    click.echo(f"{check.source}: {modality}, {check.units}; {check.sampled_pixels:,} px "
               f"sampled, {check.valid_share:.0%} valid")
    click.echo(f"{'band':<6} {'unit guess':<44} {'scene p2/p50/p98':>26}   "
               f"{'training p2/p50/p98':>26}  verdict")
    for band in check.bands:
        training = "(none in checkpoint)" if band.training is None else "/".join(
            f"{v:.4g}" for v in band.training)
        click.echo(f"{band.band:<6} {band.unit_guess:<44} "
                   f"{'/'.join(f'{v:.4g}' for v in band.scene):>26}   {training:>26}  "
                   f"{band.verdict}")
    if check.problems:
        click.echo(f"predict refuses this scene: {cli_words(check.problems[0])}")
    else:
        click.echo("predict maps this scene")


# --------------------------------------------------------------------------- qgis
@main.group(cls=_Group)
def qgis() -> None:
    """The QGIS Processing plugin: install it into a profile, or zip it."""


_executable_option = click.option(
    "--executable", help="The discomkd-geo the plugin runs [default: this environment's].")


@qgis.command("install")
@click.option("--profile-dir", type=click.Path(path_type=Path),
              help="QGIS profile [default: the 'default' profile of this system's QGIS 3].")
@_executable_option
@_overwrite_option("Replace an installed copy (upgrade).")
def qgis_install(profile_dir: Path | None, executable: str | None, overwrite: bool) -> None:
    """Write the plugin into a QGIS profile and enable it (restart QGIS to load it)."""
    from .qgis import check_executable, find_executable, install

    executable = check_executable(executable) if executable else find_executable()
    target = install(profile_dir, executable, overwrite=overwrite)
    click.echo(f"{target}: plugin installed and enabled; its algorithms run {executable}")


@qgis.command("package")
@_output_option()
@_executable_option
@_overwrite_option("Replace OUTPUT if it exists.")
def qgis_package(output: Path, executable: str | None, overwrite: bool) -> None:
    """Zip the plugin for QGIS's plugin manager (Install from ZIP)."""
    from .qgis import package

    package(output, executable, overwrite=overwrite)
    click.echo(f"{output}: QGIS plugin; install it with Plugins > Manage and Install "
               "Plugins > Install from ZIP")


@click.group("discomkd", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def rio_discomkd(ctx: click.Context) -> None:
    """DisCoM-KD land-cover mapping (the discomkd-geo commands as a rio plugin)."""
    from .logs import configure

    configure((ctx.obj or {}).get("verbosity", 0))  # rio's own -v/-q
    _interruptible()


rio_discomkd.add_command(predict)


# --------------------------------------------------------------------------- GIS chains
def _area(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--mmu`` as square metres (``0.5ha``, ``5000m2``, ``5000``)."""
    if value is None:
        return None
    from .inference.settings import parse_area

    try:
        return parse_area(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _mmu_option(command: F) -> F:
    """``--mmu`` of ``vectorize``, with the help of predict's ``mmu`` setting."""
    from .inference.settings import setting_fields

    [field] = [f for f in setting_fields() if f.name == "mmu"]
    return click.option("--mmu", callback=_area, metavar=field.metavar,
                        help=field.help)(command)


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@_output_option("GeoPackage to write (.gpkg; also .geojson, .fgb, .shp); OUTPUT_STEM.qml "
                "beside it.")
@_mmu_option
@click.option("--layer", help="Layer name [default: the output's stem].")
@_overwrite_option("Replace existing outputs.")
def vectorize(map_path: Path, output: Path, mmu: float | None, layer: str | None,
              overwrite: bool) -> None:
    """Polygons of a land-cover map: one feature per connected region.

    Attributes: class_code, class_name, color, area_m2, area_ha (areas on an equal-area
    projection when the map's CRS is geographic). A QGIS style goes beside the file.
    """
    from .inference.vectorize import vectorize_to_file

    frame = vectorize_to_file(map_path, output, mmu=mmu, layer=layer, overwrite=overwrite)
    click.echo(f"{output}: {len(frame):,} polygons, {frame['area_ha'].sum():,.2f} ha"
               + (f" (MMU {mmu:g} m2)" if mmu else ""))


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("zones", metavar="ZONES[:LAYER]")
@_output_option("Table to write: .csv, or .gpkg (with the zones' geometries).")
@_overwrite_option("Replace an existing output.")
@_no_progress_option("No progress bar.")
def zonal(map_path: Path, zones: str, output: Path, overwrite: bool, no_progress: bool) -> None:
    """Area of each class per zone (ha and % of the zone), nodata share, zone attributes.

    ZONES is any vector file geopandas reads, in any CRS (FILE:LAYER names a layer). A
    pixel counts for a zone when its centre lies inside it.
    """
    from .inference.zonal import zonal_to_file

    table = zonal_to_file(map_path, zones, output, overwrite=overwrite,
                          progress=not no_progress)
    click.echo(f"{output}: {len(table):,} zones")


# --------------------------------------------------------------------------- assessment
def _aoi_option(help: str) -> Callable[[F], F]:
    return click.option("--aoi", metavar="FILE[:LAYER]", help=help)


def _expected_ua(ctx: click.Context, param: click.Parameter,
                 values: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """``--expected-ua [CLASS=]UA`` (repeatable): every class's value, and some classes'."""
    default, by_class = 0.8, {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            accuracy = float(number)
        except ValueError as err:
            raise click.BadParameter(f"{value!r} is not [CLASS=]UA, e.g. 0.8 or "
                                     "Highway=0.6") from err
        if name:
            by_class[name] = accuracy
        else:
            default = accuracy
    return default, by_class


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "--sample-size", "size", type=click.IntRange(min=1),
              help="Points to draw (or let --target-se set it).")
@click.option("--target-se", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Standard error of the overall accuracy to aim for, e.g. 0.01: the "
                   "sample size follows from the expected user's accuracies.")
@click.option("--expected-ua", multiple=True, metavar="[CLASS=]UA", callback=_expected_ua,
              help="User's accuracy expected, for --target-se: of every class (default "
                   "0.8), or CLASS=UA of one class (repeatable).")
@click.option("--allocation", type=click.Choice(["olofsson", "proportional", "equal"]),
              default="olofsson", show_default=True,
              help="Points per class: olofsson (at least --min-per-class each, the rest "
                   "in proportion to the classes' areas), proportional, or equal.")
@click.option("--min-per-class", type=click.IntRange(min=1), default=50, show_default=True,
              help="The minimum per class of --allocation olofsson.")
@_aoi_option("Draw only inside this area (polygons, any CRS; pixel centres inside).")
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path),
              help="Fill the reference column from this class raster (synthetic scenes).")
@_seed_option("Random seed of the draw (the same seed draws the same points).")
@_output_option("Points to write (.gpkg; also .geojson, .fgb), as a layer named after "
                "the file; without it the design is printed and nothing drawn.",
                required=False)
@_overwrite_option("Replace OUTPUT if it exists.")
@_json_option("Print the design as JSON.")
def sample(map_path: Path, size: int | None, target_se: float | None,
           expected_ua: tuple[float, dict[str, float]], allocation: str, min_per_class: int,
           aoi: str | None, truth: Path | None, seed: int, output: Path | None,
           overwrite: bool, as_json: bool) -> None:
    """A stratified random sample of a map's pixels, to label and then `assess`.

    The strata are the map's classes. Each point (a pixel centre) carries its stratum,
    the stratum's area, its inclusion weight and an empty 'reference' column to fill in
    (e.g. in QGIS). Give the size (-n) or a target standard error of the overall accuracy
    (--target-se, Olofsson et al. 2014).
    """
    from .assessment.sampling import plan_sample, sample_to_file
    from .files import check_outputs

    if output is not None:
        check_outputs({"sample": output}, overwrite, inputs={"map": map_path})
    plan = plan_sample(map_path, size, target_se=target_se, expected_ua=expected_ua[0],
                       class_ua=expected_ua[1], allocation=allocation,
                       min_per_class=min_per_class, aoi=aoi)
    if as_json:
        import json

        click.echo(json.dumps({
            "map": plan.path, "aoi": plan.region.aoi, "size": plan.size,
            "allocation": plan.method, "target_se": target_se,
            "strata": [{"code": code, "name": name, "pixels": int(pixels), "area_ha": float(ha),
                        "points": int(points)} for code, (name, pixels, ha, points) in
                       enumerate(zip(plan.classes, plan.pixels, plan.areas_ha,
                                     plan.allocation, strict=True))]}, indent=2))
    else:
        why = f" for a standard error of {target_se:g} on overall accuracy" if target_se else ""
        click.echo(f"{plan.path}: {plan.size:,} points{why}, {plan.method} allocation")
        total = plan.areas_ha.sum()
        for name, pixels, ha, points in zip(plan.classes, plan.pixels, plan.areas_ha,
                                            plan.allocation, strict=True):
            click.echo(f"  {name:<22} {pixels:>12,} px {ha:>12,.1f} ha {ha / total:6.1%}"
                       f" {points:>6,} points")
    if output is not None:
        frame = sample_to_file(plan, output, seed=seed, truth=truth, overwrite=overwrite)
        labelled = int(frame["reference"].notna().sum())
        click.echo(f"{output}: {len(frame):,} points" + (
            f", {labelled:,} labelled from {truth}" if truth is not None else
            "; fill in their 'reference' column, then run discomkd-geo assess"), err=as_json)


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("reference", metavar="REFERENCE[:LAYER]")
@click.option("--label-column", default="reference", show_default=True,
              help="The points' column of reference labels (class names or codes).")
@_aoi_option("Assess inside this area only (points outside are left out, counted).")
@click.option("--zones", metavar="FILE[:LAYER]",
              help="Polygons (any CRS) to give the figures of, one by one.")
@click.option("--zone-field", help="The zones' column naming them [default: the first].")
@click.option("--interval", type=click.Choice(["score", "wald"]), default="score",
              show_default=True,
              help="95% intervals: score (Wilson-type, honest when a stratum shows few or "
                   "no points of a class) or wald (Olofsson et al.'s estimate +- 1.96 SE).")
@_output_option("Directory to write: assessment.json, assessment.csv, report.md, "
                "areas.png.", required=False, directory=True)
@_overwrite_option("Replace OUTPUT if it exists and is not empty.")
@_json_option("Print the assessment as JSON.")
def assess(map_path: Path, reference: str, label_column: str, aoi: str | None,
           zones: str | None, zone_field: str | None, interval: str, output: Path | None,
           overwrite: bool, as_json: bool) -> None:
    """Accuracy and error-adjusted class areas of a map, with 95% intervals.

    REFERENCE holds labelled points (any vector format and CRS), e.g. a sample drawn by
    `discomkd-geo sample` and labelled. Prints overall accuracy, per class the mapped
    and estimated areas and user's and producer's accuracies (Olofsson et al. 2014);
    points off the map, on nodata or without a label are counted and left out.
    """
    from .assessment.assess import assess as assess_map
    from .assessment.report import left_out_line, overall_line, text_table, write_report
    from .files import check_writable

    if output is not None:
        check_writable(output, overwrite)
    assessment = assess_map(map_path, reference, label_column, aoi=aoi, zones=zones,
                            zone_field=zone_field, interval=interval)
    if output is not None:
        write_report(assessment, output, overwrite=overwrite)
    result = assessment.to_dict()
    if as_json:
        import json

        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['map']} against {result['reference']}: {result['design']}")
    click.echo(left_out_line(result))
    click.echo(overall_line(result))
    for line in text_table(result):
        click.echo(line)
    for zone in result.get("zones", []):
        click.echo(f"zone {zone['zone']}: {overall_line(zone)}")
    if output is not None:
        click.echo(f"{output}: assessment.json, assessment.csv, report.md, areas.png")

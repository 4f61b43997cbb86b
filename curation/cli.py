"""The ``curate`` command line.

Only typer and the standard library are imported at start-up: torch, ray, pyiqa and the
stages are imported inside the commands that need them, so ``curate --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from curation.cli_options import Inputs, Overrides, Pipeline, Stage

app = typer.Typer(
    help="Curate image-restoration pretraining sets (Million-IRD style) and pretrain DyNet on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
manifest_app = typer.Typer(help="Check and summarise manifests.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
thresholds_app = typer.Typer(
    help="Choose filter thresholds from a run's scores.", no_args_is_help=True
)
app.add_typer(thresholds_app, name="thresholds")
model_app = typer.Typer(help="The bundled DyNet model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _hygiene() -> None:
    """Nothing leaves the machine unless asked: these libraries phone home by default."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "disabled")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def run(
    pipeline: Pipeline = "demo",
    stage: Stage = "all",
    input: Inputs = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Run folder: a path or a URL such as s3://bucket/run (default: runs/<pipeline name>)."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: auto, HOST:PORT or ray://...")
    ] = None,
    set_: Overrides = None,
) -> None:
    """Run the pipeline (with no arguments: the bundled offline demo)."""
    _hygiene()
    from curation.config import ConfigError, load_pipeline, source_from_input
    from curation.fetch import FetchError
    from curation.metrics.registry import UnknownMetricError
    from curation.run import STAGES, format_summary, run_pipeline
    from curation.sources import InputError
    from curation.stages.base import RunDirError
    from curation.stages.filter import FilterConfigError
    from curation.stages.patch import PatchStageError
    from curation.stages.score import ScoreConfigError
    from manifests import ManifestError
    from manifests.storage import location

    if stage != "all" and stage not in STAGES:
        _fail(f"unknown stage {stage!r}: use one of {', '.join(STAGES)} or all")
    try:
        cfg = load_pipeline(pipeline, set_ or [])
        if input:
            cfg.sources = [source_from_input(spec) for spec in input]
        if address:
            cfg.ray.address = address
        run_dir = location(output) if output else Path("runs") / cfg.name
        stages = list(STAGES) if stage == "all" else [stage]
        summaries = run_pipeline(cfg, run_dir, stages, address=cfg.ray.address)
    except (
        ConfigError,
        InputError,
        RunDirError,
        ManifestError,
        ScoreConfigError,
        UnknownMetricError,
        FilterConfigError,
        PatchStageError,
    ) as exc:
        _fail(str(exc))
    except FetchError as exc:
        _fail(str(exc), code=1)
    typer.echo(format_summary(summaries))
    typer.echo(f"run folder: {run_dir}")


@app.command()
def score(
    files: Annotated[list[Path], typer.Argument(help="Image files to score.")],
    metrics: Annotated[str, typer.Option(help="Comma list of metrics.")] = "niqe,brisque,nima",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
    weights_dir: Annotated[
        Path | None, typer.Option(help="Folder holding metric weights files.")
    ] = None,
    nima_checkpoint: Annotated[Path | None, typer.Option(help="NIMA checkpoint file.")] = None,
    allow_download: Annotated[
        bool, typer.Option(help="Let pyiqa download missing weights.")
    ] = False,
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads. BRISQUE runs in float32: scores match the score stage at equal threads."
        ),
    ] = 1,
) -> None:
    """Score image files with NIQE / BRISQUE / NIMA (lower NIQE/BRISQUE and higher NIMA is better)."""
    _hygiene()
    import torch

    torch.set_num_threads(threads)
    from curation.metrics.loader import MissingWeightsError
    from curation.metrics.registry import UnknownMetricError
    from curation.scoring import score_files

    try:
        records = score_files(
            files,
            metrics,
            device,
            weights_dir=weights_dir,
            nima_checkpoint=nima_checkpoint,
            allow_download=allow_download,
        )
    except (MissingWeightsError, UnknownMetricError, ValueError) as exc:
        _fail(str(exc))
    failed = 0
    for rec in records:
        if as_json:
            typer.echo(json.dumps(rec, sort_keys=True))
        elif "scores" in rec:
            scores = "  ".join(f"{k}={v:.4f}" for k, v in rec["scores"].items())
            typer.echo(f"{rec['path']}  {rec['width']}x{rec['height']}  {scores}")
        else:
            typer.echo(f"{rec['path']}  {rec['reason']}: {rec['error']}")
        failed += "scores" not in rec
    if failed:
        raise typer.Exit(1)


_ROOT_HELP = "Run folder, stage folder or manifest file: a path or a URL (s3://...)."


@manifest_app.command("validate")
def manifest_validate(
    root: Annotated[str, typer.Argument(help=_ROOT_HELP)],
) -> None:
    """Check every manifest under ROOT against the schema; exit 1 on any problem."""
    from manifests import validate

    report = validate(root)
    for problem in report.problems[:50]:
        typer.echo(problem, err=True)
    if len(report.problems) > 50:
        typer.echo(f"... and {len(report.problems) - 50} more problems", err=True)
    if not report.ok:
        typer.echo(
            f"INVALID: {len(report.problems)} problem(s) in {report.files} file(s)", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"OK: {report.files} manifest file(s), {report.rows} rows")


@manifest_app.command("stats")
def manifest_stats(
    root: Annotated[str, typer.Argument(help=_ROOT_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts per stage / status / reason."""
    from manifests import ManifestError, format_stats
    from manifests import manifest_stats as compute
    from manifests.storage import location

    try:
        if not location(root).exists():
            _fail(f"{root}: no such file or folder")
        stats = compute(root)
    except ManifestError as exc:
        _fail(str(exc))
    except OSError as exc:  # e.g. access denied on an object store
        _fail(f"{root}: {exc}")
    typer.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@thresholds_app.command("suggest")
def thresholds_suggest(
    run_dir: Annotated[
        str, typer.Argument(help="Run folder (its score/ stage) or a stage folder; path or URL.")
    ],
    keep_fraction: Annotated[
        float, typer.Option(help="Wanted fraction of scored images kept by all thresholds.")
    ] = 0.02,
    metrics: Annotated[
        str | None, typer.Option(help="Comma list; default: every score column.")
    ] = None,
    min_side: Annotated[
        int | None, typer.Option(help="Leave out images below this decoded size first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Propose T_NIQE / T_BRISQUE / T_NIMA keeping about KEEP_FRACTION of the images (the paper kept ~2%)."""
    from curation.thresholds import (
        ThresholdError,
        format_suggestion,
        read_scores,
        suggest_thresholds,
    )
    from manifests import ManifestError

    try:
        table = read_scores(run_dir)
        names = [m.strip() for m in metrics.split(",")] if metrics else None
        suggestion = suggest_thresholds(table, names, keep_fraction, min_side=min_side)
    except (ThresholdError, ManifestError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(suggestion, indent=2) if as_json else format_suggestion(suggestion))


@model_app.command("info")
def model_info(
    preset: Annotated[
        str, typer.Option(help="large | small | tiny (large and small share weights).")
    ] = "large",
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameters and GFLOPs (the paper's count: 2 x conv/linear multiply-adds) per variant."""
    from training.flops import model_info as info
    from training.model import preset_names

    if preset not in preset_names():
        _fail(f"unknown preset {preset!r}: use one of {', '.join(preset_names())}")
    result = info(preset, (size, size))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"DyNet preset {preset}: {result['params_m']:.2f} M parameters (one set of weights for L and S)"
    )
    for variant, v in result["variants"].items():
        typer.echo(
            f"  DyNet-{variant} reuse {v['reuse']}: {v['gflops']:.1f} GFLOPs at {size}x{size} "
            f"({v['gflops_with_attention']:.1f} with the attention products)"
        )


def _register_command_groups() -> None:
    # Each group lives in its own module (typer + stdlib only at import): `curate train ...`,
    # and the cluster commands `curate submit / status / logs / stop`.
    from curation import cli_cluster, cli_train

    cli_train.register(app)
    cli_cluster.register(app)


_register_command_groups()


def main() -> None:
    try:
        app()
    except ValueError as exc:
        # Any command given a URL it cannot open (e.g. s3fs not installed). Imported only
        # here: manifests imports pyarrow, which `curate --help` does not need.
        from manifests.storage import StorageError

        if not isinstance(exc, StorageError):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

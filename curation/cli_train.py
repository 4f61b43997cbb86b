"""``curate train dynet``: DyNet pretraining on a run's patch shards, from the command line.

Only typer and the standard library are imported here; torch and the trainer load inside the
command, so ``curate --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

STAGES = ("pretrain", "finetune")


def register(app: typer.Typer) -> None:
    """Add the ``train`` group (``curate train dynet ...``) to the main app."""
    train_app = typer.Typer(
        help="Train the bundled DyNet on curated patch shards.", no_args_is_help=True
    )
    train_app.command("dynet")(dynet)
    app.add_typer(train_app, name="train")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs (values parsed as YAML: numbers, lists, booleans) into a dict."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--degrade {item!r}: expected key=value, e.g. mask_ratio=0.3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def dynet(
    stage: Annotated[str, typer.Option(help="pretrain | finetune")] = "pretrain",
    data: Annotated[
        str | None,
        typer.Option(help="A run folder whose patch stage finished, its patch/ or index.json."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoints and metrics folder.")] = None,
    preset: Annotated[str, typer.Option(help="large (= small, shared weights) | tiny")] = "large",
    steps: Annotated[
        int, typer.Option(help="Total updates (a resume continues up to it).")
    ] = 300_000,
    batch: Annotated[int, typer.Option(help="Global batch size (all GPUs together).")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    schedule: Annotated[str, typer.Option(help="constant | cosine")] = "constant",
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 0,
    variants: Annotated[
        str, typer.Option(help="LS (dynamic: one of L/S per step) | L | S (baselines).")
    ] = "LS",
    prob_large: Annotated[float, typer.Option(help="P(DyNet-L) per step in LS mode.")] = 0.5,
    crop: Annotated[int, typer.Option(help="Training crop side in px (multiple of 8).")] = 128,
    degrade: Annotated[
        list[str] | None,
        typer.Option(help="Override a degradation setting: key=value (e.g. mask_ratio=0.3)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds init, data order, crops, variants.")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes (0 = inline).")] = 4,
    val_every: Annotated[int, typer.Option(help="Validate every N steps (0: at the end).")] = 5000,
    val_samples: Annotated[int, typer.Option(help="Held-out patches (0: no validation).")] = 64,
    latest_every: Annotated[int, typer.Option(help="Refresh latest.pt every N steps.")] = 1000,
    save_every: Annotated[
        int, typer.Option(help="Keep step_N.pt every N steps (0: never).")
    ] = 50_000,
    log_every: Annotated[int, typer.Option(help="Log metrics every N steps.")] = 50,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    amp: Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA) | bf16 | fp16 | off")] = "auto",
    grad_clip: Annotated[float, typer.Option(help="Max grad norm (0: no clipping).")] = 0.0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/latest.pt.")] = False,
    resume_from: Annotated[
        Path | None, typer.Option(help="Continue from this checkpoint instead.")
    ] = None,
    profile: Annotated[
        bool, typer.Option(help="Time data / forward+backward / optimizer.")
    ] = False,
    progress: Annotated[str, typer.Option(help="auto | tqdm | print | off")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Pretrain DyNet-L and DyNet-S in one run with shared weights (the paper's recipe).

    Multi-GPU on one node: torchrun --nproc_per_node=N -m curation.cli train dynet ...
    """
    if stage not in STAGES:
        _fail(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if stage == "finetune":
        _fail("stage 'finetune' is not available yet in this version of curate", code=1)
    if data is None:
        _fail("--data is required: a run folder whose patch stage has finished (e.g. runs/demo)")
    from manifests import ManifestError
    from training.checkpoint import CheckpointError
    from training.data import PatchDataError
    from training.pretrain import PretrainConfig, pretrain

    try:
        cfg = PretrainConfig(
            data=data,
            out=str(out or Path("runs") / f"dynet-{preset}-pretrain"),
            preset=preset,
            steps=steps,
            batch=batch,
            lr=lr,
            schedule=schedule,
            warmup=warmup,
            variants=variants,
            prob_large=prob_large,
            crop=crop,
            degrade=_parse_overrides(degrade or []),
            seed=seed,
            workers=workers,
            val_every=val_every,
            val_samples=val_samples,
            latest_every=latest_every,
            save_every=save_every,
            log_every=log_every,
            device=device,
            amp=amp,
            grad_clip=grad_clip,
            resume=str(resume_from) if resume_from else resume,
            profile=profile,
            progress=progress,
        )
        summary = pretrain(cfg, log=lambda line: typer.echo(line, err=as_json))
    except (PatchDataError, CheckpointError, ManifestError, ValueError) as exc:
        _fail(str(exc))
    except RuntimeError as exc:  # e.g. CUDA asked for and absent
        _fail(str(exc), code=1)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))

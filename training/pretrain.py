"""DyNet dynamic pretraining: each update runs DyNet-L or DyNet-S, on the same shared weights.

The loop reads top to bottom (nanoGPT-style): set up (device, DDP, data, model, optimizer,
resume), then per step: take the step's batch, pick the variant, L1 on the clean crop, Adam
update; log, validate and checkpoint on their own cadences. Paper recipe by default (Adam
lr 1e-4, betas (0.9, 0.999), batch 32 of 128x128 crops, 50% degraded + 30% masked,
P(DyNet-L) = 0.5). ``variants="L"`` or ``"S"`` trains one variant only: the baseline for the
paper's claim that dynamic pretraining halves the cost of pretraining both separately.

Reproducibility: the variant of step ``k`` is drawn from a generator keyed on (seed, k), and the
batch of step ``k`` is a pure function of (seed, k, rank, worker) (see `training.data`), so
``resume=True`` continues from ``latest.pt`` with the very batches, variants and (on CPU,
bit-for-bit) losses of an uninterrupted run. Outputs in ``out``:

- ``latest.pt`` (every ``latest_every`` steps and at the end) and ``step_NNNNNNNN.pt`` (every
  ``save_every`` steps), see `training.checkpoint`;
- ``metrics.jsonl``: one line per step ``{"event": "train", step, variant, loss, loss_masked,
  loss_unmasked, lr, seconds}`` (``step`` counts updates, 1-based; ``seconds`` is the step's
  wall time seen by the host) and one per validation ``{"event": "val", step, psnr_L, psnr_S,
  psnr_input, l1_L, l1_S}``; on resume, lines after the checkpoint's step are dropped;
- ``pretrain.json``: the run's model and train config.

Multi-GPU: launch with ``torchrun --nproc_per_node=N``; with ``WORLD_SIZE`` > 1 the process group
is set up, the model wrapped in DDP, and each rank builds ``batch / N`` samples per step from
its own streams. Every rank runs the same variant per step. Rank 0 logs, validates and saves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import checkpoint as ckpt_io
from training.data import PretrainBatches, make_loader, open_patch_index, validation_set
from training.degrade import DegradeConfig, masked_l1
from training.model import DyNet, preset

_VARIANT_TAG = 3  # SeedSequence key tag of the variant draw (see training.data for the others)

#: Train settings whose change on resume alters the data or the updates (warned about).
_STREAM_FIELDS = (
    "seed",
    "batch",
    "crop",
    "degrade",
    "variants",
    "prob_large",
    "val_samples",
    "lr",
    "betas",
    "schedule",
    "warmup",
    "grad_clip",
    "amp",
)


@dataclass
class PretrainConfig:
    """Settings of one pretraining run; defaults follow the paper.

    data: a patch run folder, its ``patch/`` folder or its ``index.json`` (path or fsspec URL).
    out: folder for checkpoints, metrics and the run card.
    preset: DyNet preset ("large" = "small" = the paper's model, "tiny" for tests/smoke runs).
    steps: total updates (a resumed run continues up to this number).
    batch: global batch (all ranks together); must divide by the number of ranks.
    lr, betas, weight_decay: Adam. schedule: "constant" or "cosine" (to 0 at ``steps``), after
        ``warmup`` linear warm-up steps.
    seed: seeds the model init, the data order, crops, degradations and the variant draws.
    workers: DataLoader worker processes (0 = in the training process). A fresh run also uses
        it as the number of data streams per rank; a resumed run keeps the checkpoint's.
    variants: "LS" (dynamic: L with probability ``prob_large``, else S), "L" or "S" only.
    crop: side of the training crops (a multiple of 8); ``degrade``: other `DegradeConfig`
        fields to override (e.g. ``{"mask_ratio": 0.3}``).
    val_every: validate (PSNR of L and S on held-out patches) every so many steps and at the
        end; 0 = only at the end. val_samples: held-out patches (0 = no validation);
        val_batch: their batch size at validation.
    latest_every: refresh ``latest.pt`` every so many steps (and at the end);
        save_every: also keep ``step_N.pt`` every so many steps (0 = never).
    log_every: flush metrics and print a progress line every so many steps.
    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    amp: "auto" (bf16 on CUDA when supported, else fp16; off on CPU), "bf16", "fp16" or "off".
    grad_clip: max global grad norm (0 = no clipping).
    resume: False, True (``out/latest.pt``) or a checkpoint path.
    deterministic: ask torch for deterministic kernels (slower on GPU; CPU is already so).
    profile: synchronise and time data wait / forward+backward / optimizer per step.
    progress: "auto" (tqdm on a terminal, else printed lines), "tqdm", "print" or "off".
    """

    data: str
    out: str
    preset: str = "large"
    steps: int = 1_000_000
    batch: int = 32
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    seed: int = 0
    workers: int = 4
    variants: str = "LS"
    prob_large: float = 0.5
    crop: int = 128
    degrade: dict[str, Any] = field(default_factory=dict)
    val_every: int = 5000
    val_samples: int = 64
    val_batch: int = 16
    latest_every: int = 1000
    save_every: int = 50_000
    log_every: int = 50
    device: str = "auto"
    amp: str = "auto"
    grad_clip: float = 0.0
    resume: bool | str = False
    deterministic: bool = False
    profile: bool = False
    progress: str = "auto"

    def __post_init__(self) -> None:
        self.data, self.out = str(self.data), str(self.out)
        self.betas = tuple(self.betas)
        checks = {
            "variants must be 'L', 'S' or 'LS'": self.variants in ("L", "S", "LS"),
            "prob_large must be in [0, 1]": 0.0 <= self.prob_large <= 1.0,
            "steps and batch must be >= 1": self.steps >= 1 and self.batch >= 1,
            "lr must be > 0": self.lr > 0,
            "schedule must be 'constant' or 'cosine'": self.schedule in ("constant", "cosine"),
            "amp must be auto, bf16, fp16 or off": self.amp in ("auto", "bf16", "fp16", "off"),
            "progress must be auto, tqdm, print or off": self.progress
            in ("auto", "tqdm", "print", "off"),
            "workers, warmup, val_* , *_every and grad_clip must be >= 0": min(
                self.workers, self.warmup, self.val_every, self.val_samples, self.save_every
            )
            >= 0
            and self.grad_clip >= 0,
            "val_batch, latest_every and log_every must be >= 1": min(
                self.val_batch, self.latest_every, self.log_every
            )
            >= 1,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(message)
        self.degrade_config()  # raises on a bad crop / override
        preset(self.preset)

    def degrade_config(self) -> DegradeConfig:
        return DegradeConfig.from_dict({**self.degrade, "crop": self.crop})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def variant_for_step(seed: int, step: int, variants: str, prob_large: float) -> str:
    """The variant of step ``step``: fixed for "L"/"S", a seeded draw keyed on (seed, step)."""
    if variants != "LS":
        return variants
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VARIANT_TAG, step)))
    return "L" if rng.random() < prob_large else "S"


def lr_factor(cfg: PretrainConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at update ``step`` (0-based)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of (B, C, H, W) tensors in [0, 1] (output clamped first)."""
    mse = (output.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


@torch.no_grad()
def validate(
    model: DyNet, val: dict[str, torch.Tensor], device: torch.device, amp, batch: int
) -> dict[str, float]:
    """Mean PSNR (dB) and L1 of DyNet-L and DyNet-S on the validation set, and of the input."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = val["input"].shape[0]
    for i in range(0, n, batch):
        inp = val["input"][i : i + batch].to(device)
        target = val["target"][i : i + batch].to(device)
        results = {"input": inp}
        for variant in ("L", "S"):
            with amp():
                results[variant] = model(inp, variant=variant).float()
        for name, out in results.items():
            sums[f"psnr_{name}"] = sums.get(f"psnr_{name}", 0.0) + psnr(out, target).sum().item()
            l1 = (out.clamp(0, 1) - target).abs().flatten(1).mean(1).sum().item()
            sums[f"l1_{name}"] = sums.get(f"l1_{name}", 0.0) + l1
    model.train(was_training)
    return {k: v / n for k, v in sorted(sums.items())}


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) pretraining; returns a summary dict (see the end of this function)."""
    rank, local_rank, world = _init_distributed()
    try:
        return _pretrain(cfg, rank, local_rank, world, log if rank == 0 else (lambda _: None))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _pretrain(
    cfg: PretrainConfig, rank: int, local_rank: int, world: int, log: Callable[[str], None]
) -> dict[str, Any]:
    wall_start = time.perf_counter()
    # --- setup -------------------------------------------------------------------------------
    device = _device(cfg.device, local_rank, world)
    amp, amp_dtype = _autocast(cfg.amp, device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} does not divide across {world} ranks")
    out = Path(cfg.out)
    model_cfg = preset(cfg.preset)
    degrade_cfg = cfg.degrade_config()
    index = open_patch_index(cfg.data)

    resume = None
    if cfg.resume:
        path = out / ckpt_io.LATEST if cfg.resume is True else Path(cfg.resume)
        resume = ckpt_io.load(path)
        ckpt_io.check_model_config(resume, model_cfg, str(path))
        _warn_changes(resume, cfg, world, index.samples, log)

    _seed_all(cfg.seed)
    model = DyNet(model_cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start, streams = 0, max(1, cfg.workers)
    counts = {"L": 0, "S": 0, "skipped": 0}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])
        ckpt_io.set_rng_states(resume["rng"])
        start, streams = int(resume["step"]), int(resume["data"]["streams"])
        counts.update(resume.get("counts", {}))
        log(f"resuming from step {start} ({path})")
    bare = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    dataset = PretrainBatches(
        index, degrade_cfg, cfg.batch // world, cfg.seed, rank, world, streams, cfg.val_samples
    )
    val = None
    if rank == 0 and cfg.val_samples:
        val = validation_set(index, degrade_cfg, cfg.val_samples, cfg.seed)
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_card(out / "pretrain.json", cfg, model_cfg, degrade_cfg, world, streams)
        _truncate_metrics(metrics_path, start)
    log(
        f"pretraining DyNet ({cfg.preset}, variants {cfg.variants}) on {index.samples} patches "
        f"({dataset.layout.train} train, {cfg.val_samples} val) from {index.root}; device "
        f"{device}, amp {amp_dtype or 'off'}, world {world}, batch {cfg.batch}, steps "
        f"{start} -> {cfg.steps}"
    )

    # --- loop --------------------------------------------------------------------------------
    progress = _Progress(cfg, start, log) if rank == 0 else None
    pending: list[tuple[int, str, torch.Tensor, float, float]] = []  # flushed every log_every
    times = {"L": [0.0, 0], "S": [0.0, 0]}  # host seconds and steps per variant, this process
    prof = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0}
    last_val: dict[str, float] = {}
    last_loss = float("nan")
    loader = make_loader(dataset, start, cfg.workers, pin_memory=device.type == "cuda")
    batches = iter(loader)
    metrics = open(metrics_path, "a") if rank == 0 else None  # noqa: SIM115
    model.train()
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t_data = time.perf_counter()
            variant = variant_for_step(cfg.seed, step, cfg.variants, cfg.prob_large)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            mask = batch["mask"].to(device, non_blocking=True)
            lr = optimizer.param_groups[0]["lr"]

            with amp():
                output = model(inp, variant=variant)
            loss = masked_l1(output.float(), target, mask)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss.total).backward()
            if cfg.profile:
                _sync(device)
            t_fb = time.perf_counter()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if cfg.profile:
                _sync(device)
            t_end = time.perf_counter()

            done = step + 1
            counts[variant] += 1
            counts["skipped"] += int(batch["skipped"])
            times[variant][0] += t_end - t0
            times[variant][1] += 1
            prof["data"] += t_data - t0
            prof["forward_backward"] += t_fb - t_data
            prof["optimizer"] += t_end - t_fb
            pending.append((done, variant, torch.stack(loss).detach(), lr, t_end - t0))

            if done % cfg.log_every == 0 or done == cfg.steps:
                last_loss = _flush(pending, metrics)
                if progress:
                    progress.update(done, last_loss, times, cfg.batch, counts["skipped"])
            if val is not None and (
                (cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps
            ):
                last_val = validate(bare, val, device, amp, cfg.val_batch)
                _write(metrics, {"event": "val", "step": done, **last_val})
                if progress:
                    progress.write(
                        f"step {done}: val PSNR L {last_val['psnr_L']:.2f} dB, S "
                        f"{last_val['psnr_S']:.2f} dB (input {last_val['psnr_input']:.2f} dB)"
                    )
            keep = cfg.save_every and done % cfg.save_every == 0
            if done % cfg.latest_every == 0 or keep or done == cfg.steps:
                state = {"counts": dict(counts), "val": last_val}
                if rank == 0:
                    _save(out, bare, optimizer, scheduler, scaler, cfg, degrade_cfg, done,
                          dataset, world, state, keep)  # fmt: skip
                if world > 1:
                    torch.distributed.barrier()
    finally:
        del batches  # stops the loader's workers
        if metrics is not None:
            metrics.close()
        if progress:
            progress.close()

    # --- summary -----------------------------------------------------------------------------
    seconds = time.perf_counter() - wall_start
    run_steps = cfg.steps - start
    summary = {
        "out": str(out),
        "checkpoint": str(out / ckpt_io.LATEST),
        "metrics": str(metrics_path),
        "start_step": start,
        "steps": max(cfg.steps, start),
        "updates": {"L": counts["L"], "S": counts["S"]},
        "skipped_samples": counts["skipped"],
        "final_loss": last_loss,
        "val": last_val,
        "seconds": seconds,
        "train_seconds": sum(t for t, _ in times.values()),
        "samples_per_s": {
            v: cfg.batch * n / t for v, (t, n) in times.items() if n and t > 0
        },  # fmt: skip
    }
    if cfg.profile and run_steps > 0:
        summary["profile_ms_per_step"] = {k: 1e3 * v / run_steps for k, v in prof.items()}
        log(
            "profile (ms/step): "
            + ", ".join(f"{k} {v:.1f}" for k, v in summary["profile_ms_per_step"].items())
        )
    log(
        f"done: {summary['steps']} steps (L {counts['L']}, S {counts['S']}), final loss "
        f"{last_loss:.4f}, {counts['skipped']} bad sample(s) skipped, {seconds:.1f} s"
    )
    return summary


# --- helpers ---------------------------------------------------------------------------------


def _init_distributed() -> tuple[int, int, int]:
    """(rank, local rank, world size); sets up the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), local_rank, dist.get_world_size()


def _device(name: str, local_rank: int, world: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return device


def _autocast(amp: str, device: torch.device):
    """(context factory, dtype or None): mixed precision on CUDA only."""
    import contextlib

    if amp == "auto":
        amp = "off" if device.type != "cuda" else "bf16"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            amp = "fp16"
    if amp == "off":
        return contextlib.nullcontext, None
    if device.type != "cuda":
        raise ValueError(f"amp {amp!r} needs a CUDA device (use amp='off' on {device})")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write(f, record: dict[str, Any]) -> None:
    if f is not None:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _flush(pending: list, metrics) -> float:
    """Write the pending per-step records (one device sync for all); returns the last loss."""
    if not pending:
        return float("nan")
    values = torch.stack([p[2] for p in pending]).cpu().tolist()
    for (done, variant, _, lr, secs), (total, masked, unmasked) in zip(
        pending, values, strict=True
    ):
        _write(
            metrics,
            {
                "event": "train",
                "step": done,
                "variant": variant,
                "loss": total,
                "loss_masked": masked,
                "loss_unmasked": unmasked,
                "lr": lr,
                "seconds": secs,
            },
        )
    pending.clear()
    return values[-1][0]


def _save(out, model, optimizer, scheduler, scaler, cfg, degrade_cfg, done, dataset, world,
          state, keep) -> None:  # fmt: skip
    checkpoint = {
        "format": ckpt_io.FORMAT,
        "version": ckpt_io.VERSION,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "train_config": cfg.to_dict(),
        "degrade_config": degrade_cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "step": done,
        "rng": ckpt_io.rng_states(),
        "data": {
            "next_step": done,
            "seed": cfg.seed,
            "streams": dataset.streams,
            "world_size": world,
            "rank_batch": dataset.batch,
            "samples": dataset.index.samples,
            "val_samples": cfg.val_samples,
        },
        **state,
    }
    latest = ckpt_io.save_atomic(checkpoint, out / ckpt_io.LATEST)
    if keep:
        ckpt_io.keep_copy(latest, out / ckpt_io.step_name(done))


def _warn_changes(resume: dict, cfg: PretrainConfig, world: int, samples: int, log) -> None:
    """Log what differs from the checkpoint's run in ways that change the batches or updates."""
    saved = resume.get("train_config", {})
    now = cfg.to_dict()
    changed = [
        f"{k} {saved.get(k)!r} -> {now[k]!r}"
        for k in _STREAM_FIELDS
        if k in saved and _plain(saved[k]) != _plain(now[k])
    ]
    data = resume.get("data", {})
    if data.get("world_size", world) != world:
        changed.append(f"world size {data['world_size']} -> {world}")
    if data.get("samples", samples) != samples:
        changed.append(f"run size {data['samples']} -> {samples} patches")
    if changed:
        log("warning: resuming with other settings, so not the interrupted run's exact "
            "continuation: " + "; ".join(changed))  # fmt: skip


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (a crashed run may have logged past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _write_run_card(path: Path, cfg, model_cfg, degrade_cfg, world: int, streams: int) -> None:
    card = {
        "train_config": cfg.to_dict(),
        "model_config": model_cfg.to_dict(),
        "degrade_config": degrade_cfg.to_dict(),
        "world_size": world,
        "streams": streams,
        "torch": torch.__version__,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class _Progress:
    """tqdm bar on a terminal (if tqdm is installed), else a printed line every log_every."""

    def __init__(self, cfg: PretrainConfig, start: int, log: Callable[[str], None]):
        self.log, self.mode, self.start = log, cfg.progress, start
        self.t0, self.bar = time.perf_counter(), None
        if self.mode in ("auto", "tqdm"):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            tty = sys.stderr.isatty()
            if tqdm is not None and (self.mode == "tqdm" or tty):
                self.bar = tqdm(total=cfg.steps, initial=start, unit="it", dynamic_ncols=True)
            else:
                self.mode = "print"

    def update(self, done: int, loss: float, times: dict, batch: int, skipped: int) -> None:
        rates = {v: batch * n / t for v, (t, n) in times.items() if n and t > 0}
        per_variant = " ".join(f"{v} {r:.1f}/s" for v, r in rates.items())
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} samples {per_variant}", refresh=False)
            self.bar.update(done - self.bar.n)
        elif self.mode == "print":
            its = (done - self.start) / max(1e-9, time.perf_counter() - self.t0)
            bad = f", {skipped} bad skipped" if skipped else ""
            self.log(f"step {done}: loss {loss:.4f}, {its:.2f} it/s, samples {per_variant}{bad}")

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        elif self.mode != "off":
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

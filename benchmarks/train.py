"""Pretraining throughput: the data loader per worker, model steps, dynamic vs separate runs.

    python benchmarks/train.py [--data RUN] [--batch 32] [--crop 128] [--batches 8]
                               [--steps 3] [--updates 12] [--sections loader,tiny,full,dynamic]

Data: ``--data`` names a run whose patch stage finished (e.g. runs/demo); without it the
benchmark cuts the demo photos (pipelines/demo/www, real photos) into 512 px tiles and writes
them as a patch run in a temporary folder, in the patch stage's format.

Sections (all printed, nothing asserted):
  loader   samples/s of one loader worker building batches (read + PNG decode + crop + degrade +
           mask), split into its parts, then the DataLoader with 0, 1 and 2 worker processes
           (steady state: the first batch, which pays the worker start-up, is not timed).
  tiny     forward + backward + Adam step time of the tiny preset on CPU, per variant.
  full     the paper's model (large preset, batch 32 of 128x128 by default) per variant: on
           CUDA with bf16 autocast when a GPU is there; on CPU only with --full-cpu (slow), at
           the batch given by --full-cpu-batch.
  dynamic  wall time of one dynamic run (L or S per step) against two separate runs (L only,
           then S only) doing the same number of updates per variant, tiny preset on CPU, the
           whole `training.pretrain.pretrain` (set-up, validation and checkpoints included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curation.decode import decode_image  # noqa: E402
from tests.training.patch_run import make_patch_run  # noqa: E402
from training.data import (  # noqa: E402
    PretrainBatches,
    ShardReader,
    decode_rgb,
    make_loader,
    open_patch_index,
)
from training.degrade import DegradeConfig, build_pretraining_sample, make_rng, masked_l1  # noqa: E402
from training.model import DyNet, preset  # noqa: E402
from training.pretrain import PretrainConfig, pretrain  # noqa: E402

DEMO_WWW = ROOT / "pipelines" / "demo" / "www"


def demo_patch_run(root: Path, size: int = 512) -> Path:
    """Tile the demo photos into ``size`` px patches and write them as a two-shard patch run."""
    tiles = []
    for path in sorted(DEMO_WWW.glob("*-unsplash.jpg")):
        try:
            rgb = decode_image(path.read_bytes(), max_pixels=10**8).rgb
        except Exception:  # noqa: BLE001 - the folder also holds deliberately broken files
            continue
        h, w = rgb.shape[:2]
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                tiles.append(np.ascontiguousarray(rgb[y : y + size, x : x + size]))
    half = len(tiles) // 2
    make_patch_run(root, shards=(half, len(tiles) - half), size=size, parts=1, images=tiles)
    return root


def loader_section(data: Path, degrade: DegradeConfig, batch: int, batches: int) -> None:
    index = open_patch_index(data)
    print(
        f"\n## loader: {index.samples} patches of {index.size} px, batch {batch}, crop {degrade.crop}"
    )
    reader = ShardReader(index)
    n = min(index.samples, 64)
    t = time.perf_counter()
    encoded = [reader.read(g)[1] for g in range(n)]
    read = (time.perf_counter() - t) / n
    t = time.perf_counter()
    decoded = [decode_rgb(b) for b in encoded]
    decode = (time.perf_counter() - t) / n
    rng = make_rng(0, 0, 0, 0)
    t = time.perf_counter()
    for img in decoded:
        build_pretraining_sample(img, degrade, rng)
    build = (time.perf_counter() - t) / n
    print(
        f"per sample: read {1e3 * read:.2f} ms, PNG decode {1e3 * decode:.2f} ms, crop + degrade "
        f"+ mask {1e3 * build:.2f} ms -> {1 / (read + decode + build):.0f} samples/s"
    )
    ds = PretrainBatches(index, degrade, batch, seed=0, streams=2)
    ds.make_batch(0)
    t = time.perf_counter()
    for step in range(1, batches + 1):
        ds.make_batch(step)
    one = batch * batches / (time.perf_counter() - t)
    print(f"one worker (in process, whole batches): {one:.0f} samples/s")
    for workers in (0, 1, 2):
        it = iter(make_loader(ds, 0, workers))
        next(it)  # worker start-up (spawn + imports) is not the steady state
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batch * batches / (time.perf_counter() - t)
        del it
        print(f"DataLoader, {workers} worker process(es): {rate:.0f} samples/s")


def step_times(model: DyNet, device: torch.device, batch: int, crop: int, steps: int, amp) -> dict:
    """Median seconds of forward + backward + Adam per variant (after one warm-up step)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, crop, crop, device=device)
    mask = torch.zeros(batch, crop, crop, dtype=torch.bool, device=device)
    out = {}
    for variant in ("L", "S"):
        times = []
        for i in range(steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with amp():
                y = model(x, variant=variant)
            loss = masked_l1(y.float(), x, mask).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
        out[variant] = statistics.median(times)
    return out


def print_steps(name: str, times: dict, batch: int, crop: int) -> None:
    for variant, sec in times.items():
        print(
            f"{name} DyNet-{variant}: {1e3 * sec:.0f} ms/step at batch {batch} of {crop}x{crop} "
            f"({batch / sec:.1f} samples/s)"
        )
    print(f"{name} S/L step time: {times['S'] / times['L']:.2f}")


def tiny_section(batch: int, crop: int, steps: int) -> None:
    print(f"\n## tiny preset on CPU ({torch.get_num_threads()} torch threads)")
    torch.manual_seed(0)
    model = DyNet(preset("tiny"))
    import contextlib

    print_steps(
        "tiny",
        step_times(model, torch.device("cpu"), batch, crop, steps, contextlib.nullcontext),
        batch,
        crop,
    )


def full_section(batch: int, crop: int, steps: int, cpu: bool, cpu_batch: int) -> None:
    import contextlib

    print("\n## full model (large preset, 16.61 M parameters)")
    torch.manual_seed(0)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        model = DyNet(preset("large")).to(device)
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(0)}, bf16 autocast")
        amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        torch.cuda.reset_peak_memory_stats()
        print_steps("full", step_times(model, device, batch, crop, steps, amp), batch, crop)
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    else:
        print("no CUDA device: the GPU figures are skipped")
    if cpu:
        model = DyNet(preset("large"))
        times = step_times(model, torch.device("cpu"), cpu_batch, crop, 1, contextlib.nullcontext)
        print_steps("full on CPU", times, cpu_batch, crop)


def dynamic_section(data: Path, updates: int, batch: int, crop: int) -> None:
    print(f"\n## dynamic vs separate runs (tiny, CPU, batch {batch} of {crop}x{crop})")
    common = dict(data=str(data), preset="tiny", batch=batch, crop=crop, workers=0,
                  val_samples=8, val_every=0, latest_every=10**6, log_every=10**6, progress="off")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        dyn = pretrain(
            PretrainConfig(out=f"{tmp}/dyn", steps=updates, **common), log=lambda _: None
        )
        dyn_wall = time.perf_counter() - t
        n_l, n_s = dyn["updates"]["L"], dyn["updates"]["S"]
        sep_wall, sep_train = 0.0, 0.0
        for variant, n in (("L", n_l), ("S", n_s)):
            if not n:
                continue
            t = time.perf_counter()
            cfg = PretrainConfig(out=f"{tmp}/{variant}", steps=n, variants=variant, **common)
            s = pretrain(cfg, log=lambda _: None)
            sep_wall += time.perf_counter() - t
            sep_train += s["train_seconds"]
    print(
        f"dynamic: {updates} updates (L {n_l}, S {n_s}) in {dyn_wall:.1f} s wall, {dyn['train_seconds']:.1f} s training"
    )
    print(
        f"separate: L {n_l} + S {n_s} updates in {sep_wall:.1f} s wall, {sep_train:.1f} s training"
    )
    print(
        f"dynamic / separate: {dyn_wall / sep_wall:.2f} wall, {dyn['train_seconds'] / sep_train:.2f} "
        "training (same updates per variant: the saving is one set-up and one set of weights; the "
        "paper's halving comes from training both variants with one run's update budget)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, help="a run whose patch stage finished (default: demo tiles)"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8, help="timed loader batches")
    ap.add_argument("--steps", type=int, default=3, help="timed model steps per variant")
    ap.add_argument("--updates", type=int, default=12, help="updates of the dynamic run")
    ap.add_argument("--dynamic-batch", type=int, default=8)
    ap.add_argument("--full-cpu", action="store_true", help="also time the full model on CPU")
    ap.add_argument("--full-cpu-batch", type=int, default=2)
    ap.add_argument("--sections", default="loader,tiny,full,dynamic")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or demo_patch_run(Path(tmp) / "run")
        degrade = DegradeConfig(crop=args.crop)
        if "loader" in sections:
            loader_section(data, degrade, args.batch, args.batches)
        if "tiny" in sections:
            tiny_section(args.batch, args.crop, args.steps)
        if "full" in sections:
            full_section(args.batch, args.crop, args.steps, args.full_cpu, args.full_cpu_batch)
        if "dynamic" in sections:
            dynamic_section(data, args.updates, args.dynamic_batch, args.crop)


if __name__ == "__main__":
    main()

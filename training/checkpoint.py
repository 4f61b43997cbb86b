"""Pretraining checkpoints: atomic files that carry the model config, the run config and state.

A checkpoint is a plain dict saved with `torch.save` (loadable with ``weights_only=True``):

- ``format`` / ``version``: ``"curate.dynet.pretrain"`` / 1;
- ``model_config``: `DyNetConfig.to_dict` (so `load_dynet` rebuilds the model without a preset);
- ``model``: the state dict of the bare DyNet (no DDP ``module.`` prefix); it serves both variants;
- ``train_config``, ``degrade_config``: the run's settings as plain types;
- ``optimizer``, ``scheduler``, ``scaler`` (None without fp16): their state dicts;
- ``step``: updates done, i.e. the next step to run;
- ``rng``: python / numpy / torch (and CUDA) generator states;
- ``data``: the data position (next step, seed, streams, world size, per-rank batch, run size);
- ``counts``: updates per variant and bad samples skipped so far.

Files are written to a temporary name in the same folder, flushed to disk and renamed, so
``latest.pt`` is always a complete checkpoint: an interrupted save leaves the previous one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.model import DyNet, DyNetConfig

FORMAT = "curate.dynet.pretrain"
VERSION = 1
LATEST = "latest.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, of another format, or does not fit the requested model."""


def step_name(step: int) -> str:
    """File name of the kept checkpoint after ``step`` updates (zero-padded: sorts by step)."""
    return f"step_{step:08d}.pt"


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """`torch.save` ``obj`` to ``path`` via a synced temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def keep_copy(src: Path, dest: Path) -> None:
    """Make ``dest`` a durable copy of ``src`` (a hard link when the file system allows)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a pretraining checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a curate DyNet pretraining checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt['version']} is newer than this curate "
            f"understands ({VERSION}); upgrade curate"
        )
    return ckpt


def check_model_config(ckpt: dict[str, Any], expected: DyNetConfig, where: str = "") -> None:
    """Raise `CheckpointError` naming the differing fields when the architectures differ."""
    saved = DyNetConfig.from_dict(ckpt["model_config"])
    if saved == expected:
        return
    diffs = [
        f"{name}: checkpoint {getattr(saved, name)!r} != requested {getattr(expected, name)!r}"
        for name in expected.to_dict()
        if getattr(saved, name) != getattr(expected, name)
    ]
    raise CheckpointError(
        f"{where or 'checkpoint'} holds a different DyNet architecture ("
        + "; ".join(diffs)
        + "): resume with the preset it was trained with, or start a new output folder"
    )


def load_dynet(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DyNet, dict[str, Any]]:
    """The DyNet saved in a checkpoint (built from its own config, in eval mode) and the dict.

    The model serves both variants: ``model(x, variant="L")`` and ``model(x, variant="S")``.
    """
    ckpt = load(path, map_location)
    model = DyNet(DyNetConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), ckpt


def rng_states() -> dict[str, Any]:
    """Every global generator's state, as plain types and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `rng_states` (CUDA states only when CUDA is there and they were saved)."""
    random.setstate(_tuples(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") is not None and torch.cuda.is_available():
        cuda = [s.cpu() for s in states["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _tuples(obj: Any) -> Any:
    """Lists back to tuples, recursively (random.setstate wants its nested tuples)."""
    return tuple(_tuples(x) for x in obj) if isinstance(obj, list | tuple) else obj

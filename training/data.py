"""Pretraining data: random access into the patch stage's shards, one reproducible batch per step.

Input is a patch run, found through ``<run>/patch/index.json`` (the patch stage's shard index:
``{format, size, samples, shards: [{path, samples}]}``, paths relative to ``<run>/patch/``), never
by listing folders. ``data`` may name the run folder, its ``patch/`` folder or the index file, as
a local path or an fsspec URL (``s3://``, ``gs://``, ``http(s)://``...: anything that can seek).
Opening a run checks it: the index exists and lists shards, the patch manifests beside the
shards are readable by this version (a newer schema raises `manifests.ManifestError`), and,
every shard exists and holds as many ``kept`` manifest rows as the index says (a stale index is
an error, not a silent miscount).

**Sampling: random access, keyed on the step.** Every patch has a global number ``g`` in index
order (shards as listed, samples in tar order). The last ``val_samples`` numbers are held out for
validation (the tail of the last shard: deterministic, and no key list has to be read); the
rest are the training set. Training samples are split into ``world_size * streams``
contiguous, equal ranges (a "stream" per (rank, loader slot); contiguous so each worker touches
few shards). Stream ``s`` walks an endless sequence of epochs, each a permutation of its range
seeded by ``(seed, epoch, rank, worker)``, so every patch is seen once per epoch. The batch of
step ``k`` on rank ``r`` comes from stream ``worker = k % streams``: it takes the next
``batch`` entries of that stream (its ``k // streams``-th batch), and its crops, degradations
and masks are drawn from ``make_rng(seed, k, r, worker)``. A batch is therefore a pure function
of ``(seed, step, rank, worker)`` and the run; resuming at step ``k`` rebuilds exactly the batch
the uninterrupted run would have seen, whatever ``k`` is, with no stream to fast-forward.

Resume is exact when ``seed``, batch, world size, stream count and the run's index are those of
the interrupted run. The stream count is a property of the data order, not of the machine: the
trainer keeps the checkpoint's count when it resumes with another number of DataLoader workers
(each worker then serves several streams; batches are the same, only locality changes).

**Cost of this choice.** Each process keeps, per shard it has touched, one open file and the
offsets of its image members (read once from the tar headers: ~1 ms per 1000-sample local shard,
one ranged read per member on object storage). Reads are one ``pread`` per sample, in random
order within the stream's shards: fine on local disks and SSD-backed network file systems, slow
on high-latency object stores (copy shards locally, or use larger streams per worker). ``pipe:``
URLs cannot seek and are refused. Permutations cost 4 bytes per training sample per stream.

**Bad samples** (undecodable image, member missing from its tar, patch smaller than the crop) are
skipped and counted: the slot is refilled with a replacement drawn from the same stream range by
the batch's generator (so the batch stays a pure function of the step), the count travels with
the batch (``batch["skipped"]``) and the first few are logged with key and error.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from manifests.storage import join, location, url
from training.degrade import DegradeConfig, build_pretraining_sample, make_rng

log = logging.getLogger(__name__)

INDEX = "index.json"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
#: Replacement draws per bad sample before the batch gives up (a run that is mostly broken).
MAX_REPLACEMENTS = 64
#: Bad samples logged per process (all are counted).
LOG_BAD = 5

# SeedSequence spawn keys: make_rng uses 3-tuples (step, rank, worker); these use other lengths
# (and a leading tag), so no stream here can coincide with a batch generator.
_PERMUTATION_TAG = 1
_VALIDATION_TAG = 2


class PatchDataError(ValueError):
    """The run cannot feed training: no index, no shards, a stale index, a crop too large."""


@dataclass(frozen=True)
class Shard:
    """One patch tar: its location (local path or URL) and how many samples the index gives."""

    path: str
    samples: int


@dataclass
class PatchIndex:
    """The shards of a patch run, in index order, with their cumulative sample counts."""

    root: str  # the patch folder (local path or URL)
    format: str
    size: int
    shards: list[Shard]
    offsets: np.ndarray = field(repr=False)  # offsets[i] = first global number of shard i

    @property
    def samples(self) -> int:
        return int(self.offsets[-1])

    def locate(self, g: int) -> tuple[int, int]:
        """(shard number, ordinal in the shard) of global sample number ``g``."""
        if not 0 <= g < self.samples:
            raise IndexError(f"sample {g} out of range (the run has {self.samples})")
        i = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return i, g - int(self.offsets[i])


def _index_location(data: str | os.PathLike) -> tuple[str, str]:
    """(patch folder, index file) for a run folder, a patch folder or an index file."""
    data = os.fspath(data)
    if data.startswith("pipe:"):
        raise PatchDataError(
            f"{data}: pipe: sources cannot seek; the loader reads shards by random access "
            "(copy the run locally or give an fsspec URL)"
        )
    loc = location(data)
    if loc.is_file():
        return url(loc.parent), url(loc)
    for folder in (loc / "patch", loc):
        if (folder / INDEX).is_file():
            return url(folder), url(folder / INDEX)
    raise PatchDataError(
        f"{data}: no patch/{INDEX} here: give a run folder whose patch stage has finished "
        f"(`curate run` / `curate patch`), its patch/ folder or the {INDEX} itself"
    )


def open_patch_index(data: str | os.PathLike, check: bool = True) -> PatchIndex:
    """Read and check a patch run's shard index (see the module doc for what is checked).

    Raises `PatchDataError` for a missing, unreadable or empty index and for a stale one, and
    lets `manifests.ManifestError` through for a manifest this version cannot read.
    """
    root, index_path = _index_location(data)
    try:
        index = json.loads(location(index_path).read_text())
        shards = [
            Shard(url(join(location(root), s["path"])), int(s["samples"])) for s in index["shards"]
        ]
        fmt, size = str(index["format"]), int(index["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, PatchDataError):
            raise
        raise PatchDataError(f"{index_path}: not a readable patch shard index ({exc})") from None
    shards = [s for s in shards if s.samples > 0]
    if not shards:
        raise PatchDataError(
            f"{index_path} lists no shard with samples: the patch stage kept no patch "
            "(check the filter thresholds and the patch stage's notes)"
        )
    offsets = np.concatenate([[0], np.cumsum([s.samples for s in shards])]).astype(np.int64)
    result = PatchIndex(root=root, format=fmt, size=size, shards=shards, offsets=offsets)
    if check:
        _check_manifests(result)
    return result


def _check_manifests(index: PatchIndex) -> None:
    """Manifests readable (schema version), shards present, kept counts equal to the index's.

    The same on a local folder and an object store: one listing for the shards, one read per
    manifest (manifests.storage).
    """
    from manifests import PATCH, find_manifests
    from manifests.storage import join, location, read_parquet, url, walk_files

    def normal(path) -> str:  # one spelling per file: "a/./b" and "a/x/../b" are "a/b"
        loc = location(path)
        return url(join(loc.parent, loc.name))

    root = location(index.root)
    manifests = find_manifests(root, PATCH)  # raises ManifestError on a newer schema
    if not manifests:
        raise PatchDataError(f"{index.root}: no patch manifest beside the shards")
    kept: dict[str, int] = {}
    for path in manifests:
        for row in read_parquet(path, columns=["status", "shard"]).to_pylist():
            if row["status"] == "kept" and row["shard"]:
                tar = url(join(path.parent, row["shard"]))
                kept[tar] = kept.get(tar, 0) + 1
    existing = {normal(p) for p in walk_files(root, ".tar")}
    for shard in index.shards:
        name = normal(shard.path)
        if name not in existing:
            raise PatchDataError(f"shard {shard.path} listed in {INDEX} does not exist")
        n = kept.get(name, 0)
        if n != shard.samples:
            raise PatchDataError(
                f"{INDEX} gives {shard.samples} samples for {shard.path} but its manifests "
                f"list {n} kept patches: the index is stale, rerun the patch stage"
            )


class ShardReader:
    """Random access to the image samples of shards, one process at a time.

    Open files and member tables are cached per process and dropped after a fork or a pickle
    (DataLoader workers), so no file offset is ever shared between processes.
    """

    def __init__(self, index: PatchIndex, max_open: int = 64):
        self.index, self.max_open = index, max_open
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._files: dict[int, Any] = {}
        self._members: dict[int, list[tuple[str, int, int]]] = {}

    def __getstate__(self) -> dict:
        return {"index": self.index, "max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def _file(self, i: int):
        if self._pid != os.getpid():
            self._reset()  # forked: the parent's descriptors and offsets are not ours
        f = self._files.get(i)
        if f is None:
            if len(self._files) >= self.max_open:
                oldest = next(iter(self._files))
                self._files.pop(oldest).close()
            self._files[i] = f = location(self.index.shards[i].path).open("rb")
        return f

    def members(self, i: int) -> list[tuple[str, int, int]]:
        """(key, data offset, size) of the image members of shard ``i``, in tar order."""
        table = self._members.get(i) if self._pid == os.getpid() else None
        if table is None:
            f = self._file(i)
            f.seek(0)
            table = []
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    if m.isfile() and ext.lower() in IMAGE_EXTENSIONS:
                        table.append((key, m.offset_data, m.size))
            self._members[i] = table
        return table

    def read(self, g: int) -> tuple[str, bytes]:
        """(key, encoded image bytes) of global sample ``g``; KeyError if the tar lacks it."""
        i, j = self.index.locate(g)
        table = self.members(i)
        if j >= len(table):
            raise KeyError(f"{self.index.shards[i].path} holds {len(table)} images, not {j + 1}")
        key, offset, size = table[j]
        f = self._file(i)
        if isinstance(f, io.BufferedReader):  # a local file: one pread, no shared offset
            data = os.pread(f.fileno(), size, offset)
        else:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"short read of {key} in {self.index.shards[i].path}")
        return key, data


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array; ValueError if unreadable."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable image")
    return np.ascontiguousarray(img[..., ::-1])


@dataclass(frozen=True)
class StreamLayout:
    """How the training samples ``[0, train)`` are cut into per-(rank, worker) streams."""

    train: int
    world_size: int
    streams: int

    def range(self, rank: int, worker: int) -> tuple[int, int]:
        """[start, stop) of global sample numbers of stream (rank, worker)."""
        n = self.world_size * self.streams
        s = rank * self.streams + worker
        return self.train * s // n, self.train * (s + 1) // n


class PretrainBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``k`` is the whole batch of step ``k`` for one rank.

    Use with ``DataLoader(ds, batch_size=None, sampler=StepSampler(start))`` (see `make_loader`):
    each worker builds whole batches. Items are dicts of tensors: ``input``, ``target``
    (float32 ``(B, 3, crop, crop)`` in [0, 1]), ``mask``, ``degraded`` (bool ``(B, crop, crop)``),
    ``index`` (int64 global sample numbers), ``skipped`` (int64 scalar: bad samples replaced).
    """

    def __init__(
        self,
        index: PatchIndex,
        degrade: DegradeConfig,
        batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        streams: int = 1,
        val_samples: int = 0,
    ):
        if batch < 1 or streams < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("need batch >= 1, streams >= 1 and 0 <= rank < world_size")
        if degrade.crop > index.size:
            raise PatchDataError(
                f"crop {degrade.crop} px is larger than the {index.size} px patches"
            )
        train = index.samples - val_samples
        if val_samples < 0 or train < world_size * streams:
            raise PatchDataError(
                f"the run has {index.samples} patches: too few for {val_samples} validation "
                f"patches and {world_size * streams} training streams (ranks x workers)"
            )
        self.index, self.degrade, self.batch, self.seed = index, degrade, batch, seed
        self.rank, self.world_size, self.streams = rank, world_size, streams
        self.layout = StreamLayout(train, world_size, streams)
        self.reader = ShardReader(index)
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._bad_logged = 0

    def stream_range(self, worker: int) -> tuple[int, int]:
        return self.layout.range(self.rank, worker)

    def _permutation(self, worker: int, epoch: int) -> np.ndarray:
        perm = self._perms.get((worker, epoch))
        if perm is None:
            start, stop = self.stream_range(worker)
            key = (_PERMUTATION_TAG, epoch, self.rank, worker)
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))
            perm = (rng.permutation(stop - start) + start).astype(np.int64)
            if len(self._perms) >= 2 * self.streams:
                self._perms.pop(next(iter(self._perms)))
            self._perms[(worker, epoch)] = perm
        return perm

    def sample_numbers(self, step: int) -> np.ndarray:
        """Global sample numbers of the batch of ``step`` (before any bad-sample replacement)."""
        worker = step % self.streams
        start, stop = self.stream_range(worker)
        n = stop - start
        first = (step // self.streams) * self.batch
        out = np.empty(self.batch, dtype=np.int64)
        for b, pos in enumerate(range(first, first + self.batch)):
            out[b] = self._permutation(worker, pos // n)[pos % n]
        return out

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return self.make_batch(step)

    def make_batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step`` on this rank: a pure function of (seed, step, rank, worker)."""
        worker = step % self.streams
        rng = make_rng(self.seed, step, self.rank, worker)
        start, stop = self.stream_range(worker)
        samples, numbers, skipped = [], [], 0
        for g in self.sample_numbers(step):
            g = int(g)
            for _ in range(MAX_REPLACEMENTS + 1):
                sample = self._sample(g, rng)
                if sample is not None:
                    break
                skipped += 1
                g = int(rng.integers(start, stop))
            else:
                raise PatchDataError(
                    f"{MAX_REPLACEMENTS} bad samples in a row in stream range [{start}, {stop}) "
                    f"of {self.index.root}: the shards look broken"
                )
            samples.append(sample)
            numbers.append(g)
        out = collate(samples)
        out["index"] = torch.as_tensor(numbers, dtype=torch.int64)
        out["skipped"] = torch.tensor(skipped, dtype=torch.int64)
        return out

    def _sample(self, g: int, rng: np.random.Generator) -> dict[str, Any] | None:
        """One sample, or None (logged) when it cannot be read, decoded or cropped."""
        key = f"#{g}"
        try:
            key, data = self.reader.read(g)
            return build_pretraining_sample(decode_rgb(data), self.degrade, rng)
        except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
            if self._bad_logged < LOG_BAD:
                self._bad_logged += 1
                log.warning("skipping bad sample %s (%s): %s", key, type(exc).__name__, exc)
            return None


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `build_pretraining_sample` outputs into batch tensors (the ``kind`` is dropped)."""
    return {
        name: torch.from_numpy(np.stack([s[name] for s in samples]))
        for name in ("input", "target", "mask", "degraded")
    }


def validation_set(
    index: PatchIndex, degrade: DegradeConfig, val_samples: int, seed: int
) -> dict[str, torch.Tensor]:
    """The held-out patches (the last ``val_samples`` in index order), cropped and degraded once.

    Sample ``i`` is built from its own generator keyed on (seed, i), so the set is the same at
    every validation of a run, on every rank, and after a resume. Unreadable samples are left
    out (and logged); ``skipped`` counts them.
    """
    reader = ShardReader(index)
    samples, skipped = [], 0
    for i, g in enumerate(range(index.samples - val_samples, index.samples)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VALIDATION_TAG, i)))
        try:
            _, data = reader.read(g)
            samples.append(build_pretraining_sample(decode_rgb(data), degrade, rng))
        except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
            skipped += 1
            log.warning("validation: skipping bad sample #%d: %s", g, exc)
    if not samples:
        raise PatchDataError(f"none of the {val_samples} validation patches could be read")
    out = collate(samples)
    out["skipped"] = torch.tensor(skipped)
    return out


class StepSampler(torch.utils.data.Sampler):
    """Endless step numbers ``start, start + 1, ...``: the loader's sampler."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one batch per worker process; OpenCV threads would oversubscribe


def make_loader(
    dataset: PretrainBatches, start_step: int, workers: int, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """An endless DataLoader yielding the batches of steps ``start_step, start_step + 1, ...``.

    Batches come back in step order whatever ``workers`` is (0 = build them in this process).
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=StepSampler(start_step),
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        # Spawned, not forked: a worker forked after the parent used OpenCV (decoding the
        # validation set, writing shards in tests) deadlocks in OpenCV's thread pool (measured:
        # the first batch never came). Spawning costs one torch import per worker, once.
        multiprocessing_context="spawn" if workers else None,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )

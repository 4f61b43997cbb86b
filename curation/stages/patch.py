"""The patch stage: cut every kept image into 512x512 patches, drop the flat ones, shard them.

Input: the filter stage's image manifests under ``<run>/filter/`` (rows with status ``kept``;
``shard`` points at the download tar, relative to the manifest file; the sample in that tar is
``<key>.<format>``). Output, mirroring the input tree, in ``<run>/patch/<same dir>/``, per input
manifest part ``<stem>.parquet``:

- ``<stem>-NNN.tar``: WebDataset shards of at most ``patch.samples_per_shard`` patches, each
  sample ``<patch key>.<png|jpg|webp>`` + ``<patch key>.json`` (lineage: image key, url, source,
  x, y, size, flat fraction, format and the parent image's ``score_*`` values);
- ``<stem>-NNN.parquet`` beside each tar: the patch manifest. Every tile is accounted for:
  ``kept`` rows point at their tar, ``rejected`` rows (reason ``flat``) have no shard and sit in
  the manifest of the shard that was open when they were cut. A part without any kept patch
  leaves one manifest ``<stem>-000.parquet`` and no tar; a part without any tile leaves none;
- ``<stem>.done.json``, written last: counts, the shards, and the images that gave no patch.

``<run>/patch/index.json`` lists every patch tar (path relative to ``<run>/patch/``, samples),
sorted, so training can size exact epochs without opening the tars.

Images that cannot be decoded here (they were decoded by the score stage, so this is rare) or
whose sample is missing from its tar get no manifest rows: a patch manifest row describes a
tile, and such an image has none. They are listed, with reason and error, in the part's done
marker and counted in the stage notes; their image rows stay ``kept`` in ``<run>/filter/``.

The input part is the unit of work, retry and resume: one Ray task per part, which reads the
download tars and writes its outputs itself (the driver never holds pixels; on a cluster the
run folder must be on a shared file system or an object store that every node can reach). A
part is skipped when its marker, the files the marker lists, and the digest of its input's
kept rows (keys, bytes' sha256, shard, lineage, scores) all hold; otherwise its leftovers
(temp files, shards of a killed run, outputs of an older filter) are deleted and it is redone.
The filter stage rewrites every part on each run, so new thresholds redo exactly the parts
whose kept images changed. ``index.json`` is rebuilt from the markers on every run. Output is
deterministic: images in key order, tiles in row-major order, fixed encoder parameters, tars
with mtime 0.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from curation.config import PatchConfig, PipelineConfig
from curation.stages.base import StageSummary, check_fingerprint, write_json_atomic
from manifests import IMAGE, PATCH, find_manifests, write_manifest
from manifests.schema import SCORE_COLUMN
from manifests.storage import (
    Location,
    discard,
    join,
    location,
    publish,
    read_parquet,
    relpath,
    remove,
    staging_file,
    url,
)

DONE_SUFFIX = ".done.json"
#: The counts of every done marker: input images (kept rows) and what became of them, tiles.
COUNTS = (
    "images",
    "images_patched",
    "images_without_tiles",
    "images_failed",
    "tiles",
    "kept",
    "rejected_flat",
)
INDEX = "index.json"


class PatchStageError(RuntimeError):
    """The patch stage cannot run (no filter output, settings that do not fit)."""


def _output_pattern(stem: str) -> re.Pattern:
    """Names of one part's shards, manifests and marker, and of their temp files."""
    stem = re.escape(stem)
    return re.compile(rf"^\.?({stem}-\d{{3,}}\.(tar|parquet)|{stem}\.done\.json)(\.tmp-.*)?$")


def clear_part(dest_dir: Location, stem: str) -> list[str]:
    """Delete the marker, shards, manifests and temp files of part ``stem``; names removed."""
    removed = []
    if not dest_dir.is_dir():
        return removed
    pattern = _output_pattern(stem)
    for path in sorted(dest_dir.iterdir(), key=lambda p: p.name):
        if pattern.match(path.name):
            remove(path)
            removed.append(path.name)
    return removed


def kept_rows(part: Location) -> list[dict]:
    """The ``kept`` rows of an input manifest part, in key order."""
    rows = [r for r in read_parquet(part).to_pylist() if r["status"] == "kept"]
    return sorted(rows, key=lambda r: r["key"])


def input_digest(rows: list[dict]) -> str:
    """sha256 of what decides a part's patches: kept images, their bytes, lineage and scores.

    The filter stage rewrites its parts on every run; a part whose kept rows changed (another
    threshold) has another digest, so its patches are redone instead of going stale.
    """
    fields = ("key", "url", "source", "shard", "format", "sha256")
    picked = [{k: v for k, v in r.items() if k in fields or SCORE_COLUMN.match(k)} for r in rows]
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def read_done(dest_dir: Location, stem: str, digest: str | None = None) -> dict | None:
    """The part's done marker if it, every file it lists and (if given) its digest hold."""
    marker = dest_dir / (stem + DONE_SUFFIX)
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    if digest is not None and done.get("input_digest") != digest:
        return None
    names = [s["tar"] for s in done["shards"] if s["tar"]] + [s["manifest"] for s in done["shards"]]
    return done if all((dest_dir / n).is_file() for n in names) else None


class _ShardWriter:
    """Writes kept patches into ``<stem>-NNN.tar`` shards and all rows into their manifests.

    A shard is closed lazily, when the next kept patch does not fit, so the rejected tiles that
    follow a full shard join it rather than opening an empty one.
    """

    def __init__(self, dest_dir: Location, stem: str, per_shard: int, fmt: str):
        self.dest_dir, self.stem, self.per_shard, self.fmt = dest_dir, stem, per_shard, fmt
        self.index, self.samples, self.rows = 0, 0, []
        self.sink = self.tmp = None
        self.shards: list[dict] = []

    def _name(self, ext: str) -> str:
        return f"{self.stem}-{self.index:03d}.{ext}"

    def add(self, row: dict, data: bytes | None = None, meta: dict | None = None) -> None:
        if data is not None:
            if self.samples == self.per_shard:
                self._close()
            if self.sink is None:
                self.tmp = staging_file(self.dest_dir / self._name("tar"))
                self.sink = TarSink(self.tmp)
            self.sink.write(row["key"], {self.fmt: data, "json": _json(meta).encode()})
            row = row | {"shard": self._name("tar")}
            self.samples += 1
        self.rows.append(row)

    def _close(self) -> None:
        if not self.rows:
            return
        tar = None
        if self.sink is not None:
            self.sink.close()
            tar = self._name("tar")
            publish(self.tmp, self.dest_dir / tar)
        write_manifest(self.rows, self.dest_dir / self._name("parquet"), PATCH)
        self.shards.append({"tar": tar, "manifest": self._name("parquet"), "samples": self.samples})
        self.index, self.samples, self.rows, self.sink, self.tmp = self.index + 1, 0, [], None, None

    def close(self) -> list[dict]:
        self._close()
        return self.shards

    def abort(self) -> None:
        """Close and delete an open temp tar after an error."""
        if self.sink is not None:
            self.sink.close()
            self.sink = None
            discard(self.tmp)


class TarSink:
    """A WebDataset shard writer, byte for byte what ``webdataset.TarWriter(path, mtime=0)``
    writes, without importing webdataset (it imports torch: seconds per new Ray worker).

    Members ``<key>.<ext>`` in sorted ``ext`` order, mode 0444, owner ``bigdata``, mtime 0:
    the same patches give the same bytes.
    """

    def __init__(self, path: Path):
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._tar = tarfile.open(fileobj=self._file, mode="w|")

    def write(self, key: str, items: dict[str, bytes]) -> None:
        for ext in sorted(items):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(items[ext]), 0, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(items[ext]))

    def close(self) -> None:
        self._tar.close()
        self._file.close()


def _json(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _score(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def patch_part(part: str, dest_dir: str, cfg: PatchConfig, max_pixels: int) -> dict:
    """Cut every kept image of one filter manifest part; write shards, manifests, marker last.

    Ray-free (the stage runs it as a Ray task). Returns the done marker's content.
    """
    import cv2

    from curation.decode import DecodeError, decode_image
    from curation.patching import cut_patches, flatness_config

    cv2.setNumThreads(1)  # one task per (fraction of a) CPU; OpenCV threads would oversubscribe
    part_path, dest = location(part), location(dest_dir)
    stem = part_path.stem
    dest.mkdir(parents=True, exist_ok=True)
    clear_part(dest, stem)  # leftovers of a killed or retried run of this part
    flat = flatness_config(cfg)
    rows = kept_rows(part_path)
    counts: Counter = Counter(dict.fromkeys(COUNTS, 0))
    counts["images"] = len(rows)
    failures = []
    writer = _ShardWriter(dest, stem, cfg.samples_per_shard, cfg.format)
    tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}
    opened = ExitStack()  # every shard file and tar opened below, closed together
    try:
        for row in rows:
            tar_loc = join(part_path.parent, row["shard"])
            tar_path = url(tar_loc)
            if tar_path not in tars:
                if not tar_loc.is_file():  # a broken run folder, not one bad image
                    raise FileNotFoundError(f"{part}: shard {row['shard']} ({tar_path}) is missing")
                f = opened.enter_context(tar_loc.open("rb"))
                tf = opened.enter_context(tarfile.open(fileobj=f, mode="r:"))
                tars[tar_path] = (tf, {m.name: m for m in tf.getmembers() if m.isfile()})
            tf, members = tars[tar_path]
            member = members.get(f"{row['key']}.{row['format']}")
            if member is None:
                failures.append(
                    {
                        "key": row["key"],
                        "reason": "missing_sample",
                        "error": f"not in {row['shard']}",
                    }
                )
                continue
            try:
                image = decode_image(tf.extractfile(member).read(), max_pixels=max_pixels)
            except DecodeError as exc:
                failures.append({"key": row["key"], "reason": exc.reason, "error": str(exc)})
                continue
            records = cut_patches(image.rgb, row["key"], cfg, flat)
            del image
            counts["images_without_tiles" if not records else "images_patched"] += 1
            scores = {k: _score(v) for k, v in sorted(row.items()) if SCORE_COLUMN.match(k)}
            lineage = {"image_key": row["key"], "url": row["url"], "source": row["source"]}
            for rec in records:
                geometry = {"x": rec.x, "y": rec.y, "size": rec.size}
                out = {"key": rec.key, **lineage, **geometry, "flat_fraction": rec.flat_fraction}
                out |= {"stage": "patch", "status": rec.status, "reason": rec.reason, **scores}
                meta = {"key": rec.key, **lineage, **geometry, "format": cfg.format}
                meta |= {"flat_fraction": rec.flat_fraction, **scores}
                writer.add(out, rec.data, meta)
                counts["tiles"] += 1
                counts["kept" if rec.status == "kept" else "rejected_" + rec.reason] += 1
    except BaseException:
        writer.abort()
        raise
    finally:
        opened.close()
    shards = writer.close()
    counts["images_failed"] = len(failures)
    done = {
        "input": relpath(part_path, dest),
        "input_digest": input_digest(rows),
        "counts": dict(sorted(counts.items())),
        "shards": shards,
        "failures": failures,
    }
    write_json_atomic(dest / (stem + DONE_SUFFIX), done)
    return done


class PatchStage:
    name = "patch"

    def __init__(
        self, cfg: PipelineConfig, run_dir: Location, address: str | None = None, log=print
    ):
        self.cfg, self.run_dir, self.address, self.log = cfg, location(run_dir), address, log
        self.inp, self.out = self.run_dir / "filter", self.run_dir / "patch"

    @property
    def max_pixels(self) -> int:
        """Decode limit: kept images passed the score stage's limit, so the same one."""
        return self.cfg.score.max_pixels

    def run(self) -> StageSummary:
        from curation.patching import flatness_config

        start = time.perf_counter()
        summary = StageSummary(self.name)
        if not self.inp.is_dir():
            raise PatchStageError(f"{self.inp} does not exist: run the filter stage first")
        try:
            flatness_config(self.cfg.patch)
        except ValueError as exc:
            raise PatchStageError(f"patch settings do not fit: {exc}") from None
        # Resources and retries decide where and how often a part runs, not its output.
        patch = self.cfg.patch.model_dump(mode="json", exclude={"cpus_per_task", "max_retries"})
        settings = {"patch": patch, "max_pixels": self.max_pixels}
        check_fingerprint(self.out / "_work" / "settings.json", settings, "patches")

        parts = find_manifests(self.inp, IMAGE)
        digests = {url(part): input_digest(kept_rows(part)) for part in parts}
        jobs = []
        for part in parts:
            dest = self._dest(part)
            if read_done(dest, part.stem, digests[url(part)]) is None:
                jobs.append((part, dest))
        self.log(f"[patch] {len(parts)} manifest part(s), {len(jobs)} to cut")
        if jobs:
            self._run_on_ray(jobs)

        dones = []
        for part in parts:
            dest = self._dest(part)
            done = read_done(dest, part.stem, digests[url(part)])
            if done is None:  # a task returned without its files: a bug, never data
                raise PatchStageError(f"part {part} has no complete output after patching")
            dones.append((dest, done))
        self._write_index(dones)
        for path in find_manifests(self.out, PATCH):
            for row in read_parquet(path, columns=["status", "reason"]).to_pylist():
                k = row["status"] + (f"/{row['reason']}" if row["reason"] else "")
                summary.counts[k] = summary.counts.get(k, 0) + 1
        summary.notes += _notes(dones, self.out)
        for note in summary.notes:
            self.log(f"[patch] {note}")
        summary.seconds = time.perf_counter() - start
        return summary

    def _dest(self, part: Location) -> Location:
        """The output folder of an input part: the same place under patch/."""
        return join(self.out, relpath(part.parent, self.inp))

    def _run_on_ray(self, jobs: list[tuple[Location, Location]]) -> None:
        from curation.ray_runtime import alive_nodes, cpus_per_unit, ensure_ray, fit_count

        ray = ensure_ray(self.address)
        pc = self.cfg.patch
        nodes = alive_nodes(ray)
        cpus = pc.cpus_per_task or cpus_per_unit(nodes)
        slots = fit_count({"CPU": cpus}, nodes)
        if not slots:
            raise PatchStageError(f"no node of the Ray cluster has {cpus} CPU for a patch task")
        self.log(f"[patch] {slots} task slot(s) of {cpus} CPU on {len(nodes)} node(s)")
        # A task whose node or process dies is rerun by Ray (max_retries); the rerun clears
        # the part and writes under its own temp names. Errors of the task itself are not
        # retried (retry_exceptions off): they are reported and a rerun of curate redoes them.
        task = ray.remote(patch_part).options(num_cpus=cpus, max_retries=pc.max_retries)
        pending = {
            task.remote(url(part), url(dest), self.cfg.patch, self.max_pixels): part
            for part, dest in jobs
        }
        finished, errors = 0, []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            part = pending.pop(ready[0])
            name = relpath(part, self.run_dir)
            try:
                c = ray.get(ready[0])["counts"]
            except Exception as exc:  # the other parts go on; a rerun redoes only this one
                cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's error
                errors.append(f"{name}: {type(cause).__name__}: {cause}")
                self.log(f"[patch] FAILED {name}: {exc}")
                continue
            finished += 1
            self.log(
                f"[patch] {finished}/{len(jobs)} part(s): {name}: {c['kept']} kept, "
                f"{c['rejected_flat']} flat, {c['images_failed']} image(s) unreadable"
            )
        if errors:
            raise PatchStageError(
                f"{len(errors)} part(s) failed (rerun to redo only those):\n" + "\n".join(errors)
            )

    def _write_index(self, dones: list[tuple[Location, dict]]) -> None:
        shards = sorted(
            (
                {
                    "path": relpath(dest / s["tar"], self.out),
                    "samples": s["samples"],
                }
                for dest, done in dones
                for s in done["shards"]
                if s["tar"]
            ),
            key=lambda s: s["path"],
        )
        write_json_atomic(
            self.out / INDEX,
            {
                "format": self.cfg.patch.format,
                "size": self.cfg.patch.size,
                "samples": sum(s["samples"] for s in shards),
                "shards": shards,
            },
        )


def _notes(dones: list[tuple[Location, dict]], out: Location) -> list[str]:
    notes = []
    failed = Counter(f["reason"] for _, d in dones for f in d["failures"])
    if failed:
        where = sorted({relpath(dest, out) for dest, d in dones if d["failures"]})
        notes.append(
            f"{sum(failed.values())} kept image(s) gave no patch because they could not be read "
            f"({', '.join(f'{r}: {n}' for r, n in sorted(failed.items()))}); keys in the "
            f"*{DONE_SUFFIX} markers under patch/{', patch/'.join(where)}"
        )
    small = sum(d["counts"].get("images_without_tiles", 0) for _, d in dones)
    if small:
        notes.append(f"{small} kept image(s) are smaller than one patch and gave no tile")
    return notes

"""Download a URL list with img2dataset, then publish its shards into the manifest format.

img2dataset runs in a child process (``python -m curation.fetch``): it installs its own SIGINT
handler (which exits 0), imports torch and wandb, and prints progress we keep in a log file;
none of that belongs in the ``curate`` process. Its raw output lives in ``_work/img2dataset``;
a shard is *published* by moving its tar beside the source's manifests and writing our manifest
part last (temp file + rename), so the manifest is the shard's done marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from curation.config import DownloadConfig
from manifests import IMAGE, write_manifest

#: img2dataset's resize errors that are data reasons (rejections), not failures.
_RESIZE_REASONS = {
    "image too small": "too_small",
    "image area too large": "too_many_pixels",
    "CV_IO_MAX_IMAGE_PIXELS": "too_many_pixels",  # OpenCV refused the declared size
    "aspect ratio too large": "aspect_ratio_too_large",
}


def rejection_reason(status: str, error: str | None) -> str | None:
    """The snake_case reason when img2dataset refused an image for its size, else None."""
    if status != "failed_to_resize" or not error:
        return None
    return next((reason for needle, reason in _RESIZE_REASONS.items() if needle in error), None)


_IMAGE_MEMBER_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def failure_reason(error: str | None) -> str:
    """A snake_case class for img2dataset's free-text error, so failures can be counted."""
    text = (error or "").lower()
    if "http error" in text:
        code = text.split("http error", 1)[1].strip().split(":")[0].strip()
        return f"http_{code}" if code.isdigit() else "http_error"
    for needle, reason in (
        ("timed out", "timeout"),
        ("decoding error", "decode_error"),
        ("!buf.empty()", "empty_body"),
        ("connection refused", "connection_refused"),
        ("name or service not known", "dns_error"),
        ("x-robots-tag", "disallowed_by_robots_tag"),
        ("hash mismatch", "hash_mismatch"),
    ):
        if needle in text:
            return reason
    return "download_error"


class FetchError(RuntimeError):
    """img2dataset itself failed (not a per-URL failure, which is recorded per row)."""


def img2dataset_args(fetch_list: Path, out: Path, cfg: DownloadConfig, use_ray: bool) -> dict:
    """The img2dataset.download() arguments: original bytes kept, real size checked."""
    return dict(
        url_list=str(fetch_list),
        output_folder=str(out),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["curate_key"],
        output_format="webdataset",
        resize_mode="no",
        skip_reencode=True,  # JPEGs keep their bytes; other formats are re-encoded (recorded)
        encode_format="jpg",
        min_image_size=cfg.min_side,  # the real size, as decoded
        max_image_area=cfg.max_image_pixels,
        processes_count=cfg.processes,
        thread_count=cfg.threads,
        timeout=cfg.timeout_s,
        retries=cfg.retries,
        number_sample_per_shard=cfg.samples_per_shard,
        incremental_mode="incremental",
        compute_hash="sha256",
        extract_exif=False,  # orientation is handled when decoding; the rest is not used
        distributor="ray" if use_ray else "multiprocessing",
        enable_wandb=False,
        user_agent_token=cfg.user_agent_token,
        oom_shard_count=5,
    )


def child_env(cfg: DownloadConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("WANDB_MODE", "disabled")
    # OpenCV refuses to decode images declaring more pixels than this, before allocating them:
    # an image with huge declared dimensions becomes a decode failure, not an out-of-memory.
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_image_pixels)
    return env


def run_img2dataset(fetch_list: Path, out: Path, cfg: DownloadConfig, address: str | None, log: Path) -> None:
    """Run img2dataset in a child process; raise FetchError with the log's tail on failure."""
    job = {"args": img2dataset_args(fetch_list, out, cfg, use_ray=address is not None), "address": address}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "curation.fetch", json.dumps(job)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=child_env(cfg),
            check=False,
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise FetchError(f"img2dataset exited with {proc.returncode}; log {log}:\n" + "\n".join(tail))


def reset_unpublished(raw: Path, dest: Path) -> None:
    """Make img2dataset redo shards whose published outputs are gone.

    img2dataset skips any shard that has a ``_stats.json``. A shard whose tar or manifest was
    deleted by the user (or lost) must be fetched again: drop its stats and stale parts.
    """
    for stats in raw.glob("*_stats.json"):
        sid = stats.name.split("_")[0]
        manifest, tar = dest / f"{sid}.parquet", dest / f"{sid}.tar"
        published = manifest.exists() and tar.exists()
        raw_tar_present = (raw / f"{sid}.tar").exists()
        if not published and not raw_tar_present:
            for stale in (stats, raw / f"{sid}.parquet", manifest, tar):
                stale.unlink(missing_ok=True)


def _tar_members(tar_path: Path) -> dict[str, tuple[int, str, str]]:
    """sample key -> (bytes, sha256, extension) of each image member of a shard."""
    out = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            stem, ext = os.path.splitext(member.name)
            if member.isfile() and ext.lower() in _IMAGE_MEMBER_EXTS:
                data = tar.extractfile(member).read()
                out[stem] = (len(data), hashlib.sha256(data).hexdigest(), ext)
    return out


def publish_shards(raw: Path, dest: Path, inputs: dict[str, dict], source_dir: Path) -> list[Path]:
    """Publish every finished img2dataset shard not yet published; returns new manifest paths.

    ``inputs`` maps our key to the normalised input row; ``source_dir`` is where manifests live
    (shard paths are stored relative to it).
    """
    new = []
    for stats in sorted(raw.glob("*_stats.json")):
        sid = stats.name.split("_")[0]
        manifest = dest / f"{sid}.parquet"
        if manifest.exists():
            continue
        raw_tar, tar = raw / f"{sid}.tar", dest / f"{sid}.tar"
        if raw_tar.exists():
            os.replace(raw_tar, tar)
        members = _tar_members(tar) if tar.exists() else {}
        shard_rel = os.path.relpath(tar, source_dir)
        rows = []
        # img2dataset writes rows in completion order; sorting makes reruns byte-identical.
        raw_rows = sorted(pq.read_table(raw / f"{sid}.parquet").to_pylist(), key=lambda r: r["key"])
        for r in raw_rows:
            row = dict(inputs[r["curate_key"]])
            row.update(stage="download", sample_key=r["key"])
            status, err = r["status"], r["error_message"]
            if status == "success" and r["key"] in members:
                size, sha, _ = members[r["key"]]
                row.update(
                    status="downloaded",
                    width=r["original_width"],
                    height=r["original_height"],
                    bytes=size,
                    sha256=sha,
                    reencoded=sha != r["sha256"],
                    shard=shard_rel,
                )
            elif rejection_reason(status, err):
                row.update(status="rejected", reason=rejection_reason(status, err))
            else:
                err = err or f"img2dataset status {status}, sample missing from shard"
                row.update(status="failed", reason=failure_reason(err), error=err)
            rows.append(row)
        write_manifest(rows, manifest, IMAGE)
        new.append(manifest)
    return new


def _main() -> None:
    job = json.loads(sys.argv[1])
    if job["address"]:
        import ray

        ray.init(address=job["address"], log_to_driver=False)
    from img2dataset import download

    download(**job["args"])


if __name__ == "__main__":
    _main()

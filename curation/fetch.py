"""Download a URL list with img2dataset, then publish its shards into the manifest format.

img2dataset runs in a child process (``python -m curation.fetch``): it installs its own SIGINT
handler (which exits 0), imports torch and wandb, and prints progress we keep in a log file;
none of that belongs in the ``curate`` process. It fetches bytes only
(``disable_all_reencoding``): originals are kept for every format, and pixels are decoded once,
later, by the score stage. Its raw shards live in ``_work/img2dataset``; a shard is *published*
by judging each image from its header (real size, format), copying the kept ones into a tar
named by our keys beside the manifests, and writing our manifest part last (temp file +
rename, or one upload on object stores), so the manifest is the shard's done marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

from curation.config import DownloadConfig
from curation.samples import store_sample
from manifests import IMAGE, write_manifest
from manifests.storage import Location, atomic_output, read_parquet, remove


def failure_reason(error: str | None) -> str:
    """A snake_case class for img2dataset's free-text error, so failures can be counted."""
    text = (error or "").lower()
    if "http error" in text:
        code = text.split("http error", 1)[1].strip().split(":")[0].strip()
        return f"http_{code}" if code.isdigit() else "http_error"
    for needle, reason in (
        ("timed out", "timeout"),
        ("connection refused", "connection_refused"),
        ("connection reset", "connection_reset"),
        ("name or service not known", "dns_error"),
        ("x-robots-tag", "disallowed_by_robots_tag"),
        ("hash mismatch", "hash_mismatch"),
    ):
        if needle in text:
            return reason
    return "download_error"


class FetchError(RuntimeError):
    """img2dataset itself failed (not a per-URL failure, which is recorded per row)."""


def img2dataset_args(
    fetch_list: Location, out: Location, cfg: DownloadConfig, use_ray: bool
) -> dict:
    """The img2dataset.download() arguments: bytes as fetched, incremental, sha256."""
    return dict(
        url_list=str(fetch_list),
        output_folder=str(out),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["curate_key"],
        output_format="webdataset",
        # Keep the original bytes of every format (skip_reencode alone still decodes each
        # image and turns PNG/WebP into JPEG); size limits are checked from the header at
        # publish time, and the score stage decodes each image once.
        disable_all_reencoding=True,
        processes_count=cfg.processes,
        thread_count=cfg.threads,
        timeout=cfg.timeout_s,
        retries=cfg.retries,
        number_sample_per_shard=cfg.samples_per_shard,
        incremental_mode="incremental",
        compute_hash="sha256",
        extract_exif=False,
        distributor="ray" if use_ray else "multiprocessing",
        enable_wandb=False,
        user_agent_token=cfg.user_agent_token,
        oom_shard_count=5,
    )


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("WANDB_MODE", "disabled")
    return env


def run_img2dataset(
    fetch_list: Location, out: Location, cfg: DownloadConfig, address: str | None, log: Location
) -> None:
    """Run img2dataset in a child process; raise FetchError with the log's tail on failure.

    img2dataset reads ``fetch_list`` and writes ``out`` through fsspec itself, so both may be
    object-store URLs. Its log is written locally and then published as ``log`` (appended to
    the previous runs' log), since an object cannot be appended to.
    """
    job = {
        "args": img2dataset_args(fetch_list, out, cfg, use_ray=address is not None),
        "address": address,
    }
    with atomic_output(log) as local_log:
        if log.exists():
            local_log.write_bytes(log.read_bytes())
        with open(local_log, "ab") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "curation.fetch", json.dumps(job)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=child_env(),
                check=False,
            )
        tail = local_log.read_text(errors="replace").strip().splitlines()[-15:]
    if proc.returncode != 0:
        raise FetchError(
            f"img2dataset exited with {proc.returncode}; log {log}:\n" + "\n".join(tail)
        )


def reset_unpublished(raw: Location, dest: Location) -> None:
    """Make img2dataset redo shards whose published outputs are gone.

    img2dataset skips any shard that has a ``_stats.json``. A shard whose tar or manifest was
    deleted (by the user, or lost) and whose raw tar is gone must be fetched again.
    """
    for stats in _finished_shards(raw):
        sid = stats.name.split("_")[0]
        manifest, tar = dest / f"{sid}.parquet", dest / f"{sid}.tar"
        if not (manifest.exists() and tar.exists()) and not (raw / f"{sid}.tar").exists():
            for stale in (stats, raw / f"{sid}.parquet", manifest, tar):
                remove(stale)


def _finished_shards(raw: Location) -> list[Location]:
    """img2dataset's ``NNNNN_stats.json`` files: written last, once a shard is complete."""
    if not raw.is_dir():
        return []
    return sorted((p for p in raw.iterdir() if p.name.endswith("_stats.json")), key=str)


def publish_shards(
    raw: Location, dest: Location, inputs: dict[str, dict], cfg: DownloadConfig
) -> list[Location]:
    """Publish every finished img2dataset shard not yet published; returns new manifest paths.

    ``inputs`` maps our key to the normalised input row.
    """
    new = []
    for stats in _finished_shards(raw):
        sid = stats.name.split("_")[0]
        manifest = dest / f"{sid}.parquet"
        if manifest.exists():
            continue
        raw_rows = {r["key"]: r for r in read_parquet(raw / f"{sid}.parquet").to_pylist()}
        rows = _publish_tar(raw / f"{sid}.tar", dest / f"{sid}.tar", raw_rows, inputs, cfg)
        for raw_key, r in raw_rows.items():
            if raw_key not in rows:
                err = (
                    r["error_message"]
                    or f"img2dataset status {r['status']}, sample missing from its shard"
                )
                rows[raw_key] = dict(
                    inputs[r["curate_key"]],
                    stage="download",
                    status="failed",
                    reason=failure_reason(err),
                    error=err,
                )
        # img2dataset finishes rows in any order; sorting by its input-order key makes the
        # manifest identical on every rerun.
        write_manifest([rows[k] for k in sorted(rows)], manifest, IMAGE)
        remove(raw / f"{sid}.tar")  # published: the raw copy is not needed
        new.append(manifest)
    return new


def _publish_tar(
    raw_tar: Location, tar: Location, raw_rows: dict, inputs: dict, cfg: DownloadConfig
) -> dict[str, dict]:
    """Stream the raw tar's images into ``tar`` under our keys; one manifest row per image."""
    rows: dict[str, dict] = {}
    if not raw_tar.exists():
        return rows
    # Imported here, not at the top: img2dataset's spawned workers re-import this module
    # (it is their __main__), and webdataset imports torch.
    import webdataset as wds

    with (
        raw_tar.open("rb") as raw_file,
        tarfile.open(fileobj=raw_file, mode="r|") as src,  # one sequential pass
        atomic_output(tar) as tmp,
        wds.TarWriter(str(tmp), mtime=0) as sink,
    ):
        for member in src:
            stem, ext = os.path.splitext(member.name)
            if ext != ".jpg" or stem not in raw_rows:  # its .json/.txt are replaced by ours
                continue
            data = src.extractfile(member).read()
            r = raw_rows[stem]
            rows[stem] = store_sample(
                inputs[r["curate_key"]], data, cfg, sink, tar.name, sha256=r["sha256"]
            )
    return rows


def _main() -> None:
    job = json.loads(sys.argv[1])
    if job["address"]:
        import ray

        ray.init(address=job["address"], log_to_driver=False)
    from img2dataset import download

    download(**job["args"])


if __name__ == "__main__":
    _main()

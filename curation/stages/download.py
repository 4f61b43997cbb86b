"""The download stage: LAION-style URL lists via img2dataset, and local folders, into shards.

Output, per source, in ``<run>/download/<source>/``: ``NNNNN.tar`` WebDataset shards, a
manifest part ``NNNNN.parquet`` beside each, and ``prefiltered.parquet`` for the rows removed
from metadata before any download. Every input row ends in exactly one manifest row.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.config import PipelineConfig, SourceConfig
from curation.demo_server import serve_folder
from curation.fetch import publish_shards, reset_unpublished, run_img2dataset
from curation.ingest import ingest_folder
from curation.prefilter import prefilter_reasons
from curation.sources import list_image_folder, read_url_list
from curation.stages.base import StageSummary, check_fingerprint
from manifests import IMAGE, find_manifests, write_manifest
from manifests.storage import Location, atomic_output, location, read_parquet

PREFILTERED = "prefiltered.parquet"


class AccountingError(RuntimeError):
    """Manifests do not account for every input row exactly once (a bug, never data)."""


class DownloadStage:
    name = "download"

    def __init__(
        self, cfg: PipelineConfig, run_dir: Location, address: str | None = None, log=print
    ):
        self.cfg, self.run_dir, self.address, self.log = cfg, location(run_dir), address, log
        self.out = self.run_dir / "download"

    def run(self) -> StageSummary:
        start = time.perf_counter()
        summary = StageSummary(self.name)
        for src in self.cfg.sources:
            dest = self.out / src.name
            settings = {
                "source": src.model_dump(mode="json"),
                "download": self.cfg.download.model_dump(mode="json"),
            }
            check_fingerprint(
                dest / "_work" / "settings.json", settings, f"a download of source {src.name!r}"
            )
            if src.kind == "laion":
                expected = self._run_url_list(src, dest)
            else:
                expected = self._run_folder(src, dest)
            counts = count_statuses(dest)
            if sum(counts.values()) != expected:
                raise AccountingError(
                    f"source {src.name}: {expected} input rows but {sum(counts.values())} manifest rows"
                )
            for k, n in counts.items():
                summary.counts[k] = summary.counts.get(k, 0) + n
        summary.seconds = time.perf_counter() - start
        return summary

    def _run_url_list(self, src: SourceConfig, dest: Location) -> int:
        rows = read_url_list(src)
        reasons = prefilter_reasons(rows, self.cfg.download)
        public = rows.select([c for c in rows.column_names if not c.startswith("_")])
        dropped = pc.is_valid(reasons)
        removed = public.filter(dropped)
        removed = removed.append_column(
            "stage", pa.array(["download"] * removed.num_rows, pa.string())
        )
        removed = removed.append_column(
            "status", pa.array(["prefiltered"] * removed.num_rows, pa.string())
        )
        removed = removed.append_column("reason", reasons.filter(dropped))
        write_manifest(removed, dest / PREFILTERED, IMAGE)

        to_fetch = public.filter(pc.invert(dropped))
        self.log(
            f"[download] {src.name}: {rows.num_rows} rows, {removed.num_rows} prefiltered, {to_fetch.num_rows} to fetch"
        )
        if to_fetch.num_rows:
            work = dest / "_work"
            raw = work / "img2dataset"
            fetch_list = work / "fetch.parquet"
            server = serve_folder(src.serve) if src.serve else nullcontext(None)
            with server as base_url:
                urls = to_fetch["url"].to_pylist()
                if base_url:
                    urls = [
                        base_url + u[len(src.serve_prefix) :]
                        if u.startswith(src.serve_prefix)
                        else u
                        for u in urls
                    ]
                # Rewritten on every run (the demo server's port changes); the rows and their
                # order do not, so img2dataset's shard numbering is stable across reruns.
                fetch = pa.table(
                    {"url": urls, "caption": to_fetch["caption"], "curate_key": to_fetch["key"]}
                )
                with atomic_output(fetch_list) as tmp:
                    pq.write_table(fetch, tmp)
                reset_unpublished(raw, dest)
                if not _all_published(dest, to_fetch.num_rows, self.cfg.download.samples_per_shard):
                    run_img2dataset(
                        fetch_list, raw, self.cfg.download, self.address, work / "img2dataset.log"
                    )
            inputs = {r["key"]: r for r in to_fetch.to_pylist()}
            new = publish_shards(raw, dest, inputs, self.cfg.download)
            self.log(f"[download] {src.name}: published {len(new)} new shard(s)")
        return rows.num_rows

    def _run_folder(self, src: SourceConfig, dest: Location) -> int:
        files, skipped = list_image_folder(src)
        if skipped:
            self.log(f"[download] {src.name}: ignored {skipped} file(s) without an image extension")
        new = ingest_folder(src, files, self.cfg.download, dest)
        self.log(f"[download] {src.name}: {len(files)} images, wrote {len(new)} new shard(s)")
        return len(files)


def _all_published(dest: Location, rows: int, per_shard: int) -> bool:
    shards = -(-rows // per_shard)
    return all((dest / f"{i:05d}.parquet").exists() for i in range(shards))


def count_statuses(folder: Location) -> Counter:
    """'status' or 'status/reason' -> rows, over the manifests in ``folder``."""
    counts: Counter = Counter()
    for path in find_manifests(folder, IMAGE):
        for row in read_parquet(path, columns=["status", "reason"]).to_pylist():
            counts[row["status"] + (f"/{row['reason']}" if row["reason"] else "")] += 1
    return counts

"""The score stage: NIQE / BRISQUE / NIMA scores for every downloaded image, on Ray.

Reads the download stage's manifests and shards; writes ``<run>/score/<source>/`` manifests,
one per download manifest part, holding every row (so the folder is a complete account) with
``score_<metric>`` columns. Downloaded images become ``scored``, or ``failed`` / ``rejected``
with the reason (decode error, too small for a metric, out of memory, too many pixels).

One actor per worker loads the models once. How many workers and what each reserves come from
the config and from what the cluster's alive nodes report (see ScoreConfig): workers ask for a
GPU only when the cluster has one (asking for a GPU that does not exist waits forever) and
fractional CPUs on small nodes (whole CPUs for every worker stalled on 2-core machines). The
shard is the unit of work, retry and resume: a manifest part that exists is not scored again;
a shard whose worker dies (its node lost) is requeued and a replacement worker started. Workers
only return scores, the driver writes every manifest, so a shard scored twice is written once.
"""

from __future__ import annotations

import os
import time

from curation.config import PipelineConfig
from curation.stages.base import StageSummary, check_fingerprint
from curation.stages.download import count_statuses
from manifests import IMAGE, find_manifests, write_manifest
from manifests.storage import Location, join, location, read_parquet, relpath, url


class ScoreConfigError(ValueError):
    """The scoring setup cannot run (e.g. weights missing while all metrics are required)."""


def available_metrics(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """(metrics that can run, metrics left out because their weights are missing).

    Raises ScoreConfigError (with the loader's how-to-fix message) when a metric is missing
    and the pipeline requires all of them.
    """
    from curation.metrics.loader import find_weights
    from curation.metrics.registry import parse_metrics

    sc = cfg.score
    specs = parse_metrics(sc.metrics)
    if sc.allow_download:
        return [s.name for s in specs], []
    missing = [
        s
        for s in specs
        if s.weights_file
        and find_weights(s, weights_dir=sc.weights_dir, nima_checkpoint=sc.nima_checkpoint) is None
    ]
    if missing and sc.require_all_metrics:
        from curation.metrics.loader import _missing

        others = [s.name for s in specs if s not in missing]
        msg = str(_missing(missing[0], sc.weights_dir, sc.nima_checkpoint, others))
        raise ScoreConfigError(
            f"pipeline {cfg.name!r} requires all of {', '.join(sc.metrics)} (score.require_all_metrics): {msg}"
        )
    return [s.name for s in specs if s not in missing], [s.name for s in missing]


def cascade_thresholds(cfg: PipelineConfig, metrics: list[str]) -> dict[str, list] | None:
    """metric -> ["max" | "min", threshold] from the filter config, when cascade is on.

    The thresholds become part of the scores' settings: changing one means rescoring in
    cascade mode (skipped metrics were never computed), unlike full scoring.
    """
    if not cfg.score.cascade:
        return None
    from curation.stages.filter import filter_thresholds

    out = {
        t.metric: [t.op, float(t.value)]
        for t in filter_thresholds(cfg.filter)
        if t.metric in metrics
    }
    if not out:
        raise ScoreConfigError(
            "score.cascade needs at least one filter threshold (filter.max_niqe, ...)"
        )
    return out


class ScoreStage:
    name = "score"

    def __init__(
        self, cfg: PipelineConfig, run_dir: Location, address: str | None = None, log=print
    ):
        self.cfg, self.run_dir, self.address, self.log = cfg, location(run_dir), address, log
        self.inp, self.out = self.run_dir / "download", self.run_dir / "score"

    def run(self) -> StageSummary:
        start = time.perf_counter()
        summary = StageSummary(self.name)
        metrics, left_out = available_metrics(self.cfg)
        if not self.inp.is_dir():
            raise ScoreConfigError(f"{self.inp} does not exist: run the download stage first")
        if left_out:
            note = (
                f"NOT SCORED WITH {', '.join(m.upper() for m in left_out)}: weights missing; "
                f"scores use {', '.join(metrics)} only (see README, 'Quality scoring')"
            )
            summary.notes.append(note)
            self.log(f"[score] WARNING: {note}")
        if not metrics:
            raise ScoreConfigError(
                "no metric can run: every requested metric's weights are missing"
            )
        cascade = cascade_thresholds(self.cfg, metrics)
        settings = {"metrics": metrics, "max_pixels": self.cfg.score.max_pixels, "cascade": cascade}
        check_fingerprint(self.out / "_work" / "settings.json", settings, "scores")

        parts = find_manifests(self.inp, IMAGE)
        todo, carried = [], 0
        for part in parts:
            dest = self.out / relpath(part, self.inp)
            if dest.exists():
                continue
            rows = read_parquet(part).to_pylist()
            to_score = [r for r in rows if r["status"] == "downloaded"]
            if to_score:
                todo.append((part, dest, rows, to_score))
            else:  # nothing to score (e.g. prefiltered rows): carry the rows over
                self._write(part, dest, rows, {}, metrics)
                carried += 1
        n_images = sum(len(t[3]) for t in todo)
        self.log(
            f"[score] {len(parts)} manifest part(s): {len(todo)} shard(s) / {n_images} image(s) to score with {', '.join(metrics)}"
        )
        if todo:
            self._score_on_ray(todo, metrics, cascade)
        for src_dir in sorted(
            p for p in self.out.iterdir() if p.is_dir() and not p.name.startswith("_")
        ):
            for k, n in count_statuses(src_dir).items():
                summary.counts[k] = summary.counts.get(k, 0) + n
        summary.seconds = time.perf_counter() - start
        return summary

    def _plan(self, ray) -> tuple[str, int, dict]:
        """(device, workers, Ray options per worker), sized from the cluster's alive nodes."""
        from curation.ray_runtime import alive_nodes, cpus_per_unit, fit_count

        sc = self.cfg.score
        nodes = alive_nodes(ray)
        gpus = sum(n.get("GPU", 0) for n in nodes)
        device = sc.device if sc.device != "auto" else ("cuda" if gpus else "cpu")
        if device == "cuda" and not gpus:
            raise ScoreConfigError("score.device is cuda but the Ray cluster reports no GPU")
        if device == "cuda":
            need = {"GPU": sc.gpus_per_worker, "CPU": sc.cpus_per_worker or 1.0}
            fit = fit_count(need, nodes)
            options = {"num_gpus": need["GPU"], "num_cpus": need["CPU"]}
        else:
            # How many fit counts whole threads per node; what each reserves may be less
            # (small nodes) so that Ray never waits for a CPU the pool itself holds.
            fit = fit_count({"CPU": sc.threads_per_worker}, nodes)
            cpus = sc.cpus_per_worker or cpus_per_unit(nodes, sc.threads_per_worker)
            options = {"num_cpus": cpus}
        if not fit and not sc.workers:
            raise ScoreConfigError(
                f"no node of the Ray cluster can hold a {device} worker asking {options}"
            )
        # SPREAD: model loads and work go to every node, not packed onto the first.
        options |= {"scheduling_strategy": "SPREAD", "max_restarts": 0}
        return device, sc.workers or fit, options

    def _score_on_ray(self, todo: list, metrics: list[str], cascade: dict | None) -> None:
        from curation.actor_map import map_on_actors
        from curation.ray_runtime import ensure_ray
        from curation.shard_scorer import ShardScorer

        ray = ensure_ray(self.address)
        sc = self.cfg.score
        device, n_workers, options = self._plan(ray)
        n_workers = max(1, min(n_workers, len(todo)))
        self.log(f"[score] {n_workers} worker(s) on {device}, each {options['num_cpus']} CPU")
        actor = ray.remote(ShardScorer).options(**options)

        def make_worker():
            return actor.remote(
                metrics,
                device=device,
                weights_dir=sc.weights_dir,
                nima_checkpoint=sc.nima_checkpoint,
                allow_download=sc.allow_download,
                max_pixels=sc.max_pixels,
                threads=sc.threads_per_worker if device == "cpu" else None,
                cascade=cascade,
            )

        jobs = [
            (url(join(part.parent, rows_[0]["shard"])), [r["key"] for r in rows_])
            for part, _, _, rows_ in todo
        ]
        results = map_on_actors(
            ray,
            make_worker,
            n_workers,
            jobs,
            lambda w, job: w.score_shard.remote(*job),
            max_retries=sc.max_retries,
            describe=lambda job: relpath(location(job[0]), self.run_dir),
            log=lambda msg: self.log(f"[score] {msg}"),
        )
        # Only the driver writes: a shard scored twice (its first worker lost) is written once.
        for done, (i, result) in enumerate(results, 1):
            part, dest, rows, _ = todo[i]
            self._write(part, dest, rows, result, metrics)
            self.log(f"[score] {done}/{len(todo)} shard(s) scored")

    def _write(
        self, part: Location, dest: Location, rows: list[dict], results: dict, metrics: list[str]
    ) -> None:
        out = []
        rel_base = relpath(part.parent, dest.parent)
        for row in rows:
            row = dict(row)
            if row.get("shard"):
                row["shard"] = os.path.normpath(os.path.join(rel_base, row["shard"]))
            for m in metrics:
                row.setdefault(f"score_{m}", None)
            res = results.get(row["key"])
            if res is not None:
                row["stage"] = "score"
                row.update({k: res[k] for k in ("width", "height", "decode_info") if k in res})
                for m, v in res.get("scores", {}).items():
                    row[f"score_{m}"] = float(v)
                if res.get("reason") and "status" not in res:
                    row["reason"] = res["reason"]  # cascade: later metrics skipped
                if "status" in res:
                    row.update(status=res["status"], reason=res["reason"], error=res["error"])
                else:
                    row["status"] = "scored"
            out.append(row)
        write_manifest(out, dest, IMAGE)

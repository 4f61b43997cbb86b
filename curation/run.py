"""Run a pipeline's stages in order into one run folder, and describe the run.

The run folder (a local folder or an object-store URL, see manifests.storage) holds ``config.yaml`` (the resolved config), ``run.json`` (versions, seed,
timings, counts) and one sub-folder per stage.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time

from curation.config import PipelineConfig, dump_config
from curation.redact import redact_argv
from curation.run_lock import acquire_run_lock, release_run_lock
from curation.stages.base import StageSummary, write_json_atomic
from manifests.storage import Location, location, write_text_atomic

STAGES = ("download", "score", "filter", "patch")


class StageUnavailable(RuntimeError):
    """A stage that this version of curate does not implement yet."""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("curate", "img2dataset", "ray", "pyarrow", "webdataset", "pyiqa", "torch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def stage_class(name: str):
    if name == "download":
        from curation.stages.download import DownloadStage

        return DownloadStage
    if name == "score":
        from curation.stages.score import ScoreStage

        return ScoreStage
    if name == "filter":
        from curation.stages.filter import FilterStage

        return FilterStage
    if name == "patch":
        from curation.stages.patch import PatchStage

        return PatchStage
    raise StageUnavailable(f"stage {name!r} is not available yet in this version of curate")


def run_pipeline(
    cfg: PipelineConfig,
    run_dir: str | os.PathLike | Location,
    stages: list[str],
    address: str | None = None,
    log=print,
) -> list[StageSummary]:
    """Run ``stages`` in order; stops at the first unavailable stage (reported, not an error)."""
    if "score" in stages:
        # Refuse before downloading anything when the scoring setup cannot run.
        from curation.stages.score import available_metrics

        available_metrics(cfg)
    run_dir = location(run_dir)
    lock = acquire_run_lock(run_dir, stages)
    try:
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
        summaries: list[StageSummary] = []
        try:
            _run_stages(cfg, run_dir, stages, address, log, summaries)
        finally:
            from curation.ray_runtime import shutdown_ray

            shutdown_ray()
    finally:
        release_run_lock(run_dir, lock)
    return summaries


def _run_stages(cfg, run_dir, stages, address, log, summaries) -> None:
    for name in stages:
        try:
            cls = stage_class(name)
        except StageUnavailable as exc:
            log(f"[{name}] {exc}; stopping here")
            break
        summaries.append(cls(cfg, run_dir, address=address, log=log).run())
        card = {
            "pipeline": cfg.name,
            "seed": cfg.seed,
            "command": redact_argv(sys.argv),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "stages": {
                s.stage: {"seconds": round(s.seconds, 3), "counts": s.counts, "notes": s.notes}
                for s in summaries
            },
        }
        write_json_atomic(run_dir / "run.json", card)
        write_text_atomic(run_dir / "RUNCARD.md", format_run_card(card, dump_config(cfg)))


def format_run_card(card: dict, config_yaml: str) -> str:
    """A human-readable card of the run: what ran, with what, what came out, what to know."""
    lines = [
        f"# Run card: {card['pipeline']}",
        "",
        f"- finished: {card['finished_at']}",
        f"- seed: {card['seed']}",
        f"- command: `{' '.join(card['command'])}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        "",
        "## Stages",
    ]
    for stage, info in card["stages"].items():
        lines += [
            "",
            f"### {stage} ({info['seconds']:.1f} s, {sum(info['counts'].values())} rows)",
            "",
        ]
        lines += [f"- {k}: {n}" for k, n in sorted(info["counts"].items())]
        lines += [f"- **NOTE: {n}**" for n in info["notes"]]
    lines += ["", "## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def format_summary(summaries: list[StageSummary]) -> str:
    lines = []
    for s in summaries:
        total = sum(s.counts.values())
        lines.append(f"{s.stage}: {total} rows in {s.seconds:.1f} s")
        for key, n in sorted(s.counts.items()):
            lines.append(f"  {key:<40} {n:>8}")
        lines += [f"  note: {n}" for n in s.notes]
    return "\n".join(lines)

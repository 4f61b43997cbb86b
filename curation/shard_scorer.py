"""Score the images of one shard: decode each once, run every metric. Ray-free.

The score stage runs one :class:`ShardScorer` per Ray worker (an actor, so the models load
once per worker); tests and benchmarks use it directly.
"""

from __future__ import annotations

import json
import os
import tarfile
from typing import Any


class ShardScorer:
    """Holds a loaded MetricSet; scores the listed keys of a WebDataset shard."""

    def __init__(
        self,
        metrics: list[str],
        *,
        device: str = "cpu",
        weights_dir: str | None = None,
        nima_checkpoint: str | None = None,
        allow_download: bool = False,
        max_pixels: int,
        threads: int | None = None,
        cascade: dict[str, tuple[str, float]] | None = None,
    ):
        """``cascade``: metric -> ("max" | "min", threshold). When given, metrics run cheapest
        first and the rest are skipped once an image fails a threshold: the image is rejected
        by the filter anyway, so the selection is the same as with full scoring."""
        import torch

        from curation.metrics.loader import MetricSet
        from curation.metrics.registry import get_spec

        if threads:
            torch.set_num_threads(threads)
        self.max_pixels = max_pixels
        self.cascade = cascade
        self.order = sorted(metrics, key=lambda m: get_spec(m).cpu_seconds_1024)
        self.metrics = MetricSet(
            metrics,
            device=device,
            weights_dir=weights_dir,
            nima_checkpoint=nima_checkpoint,
            allow_download=allow_download,
        )

    def score_shard(self, tar_path: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """key -> ``{"width", "height", "decode_info", "scores"}`` or ``{"status", "reason", "error"}``.

        Per-image problems (decode error, too many pixels, too small for a metric, out of
        memory) become that image's result; they never abort the shard.
        """
        from curation.decode import DecodeError, TooManyPixelsError, decode_image
        from curation.metrics.loader import ScoringError
        from manifests.storage import open_input

        wanted = set(keys)
        results: dict[str, dict[str, Any]] = {}
        # One sequential pass (stream mode): the same cost on a local disk and an object store.
        with open_input(tar_path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                key, ext = os.path.splitext(member.name)
                if key not in wanted or ext == ".json" or key in results or not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                try:
                    image = decode_image(data, max_pixels=self.max_pixels)
                except TooManyPixelsError as exc:
                    results[key] = {
                        "status": "rejected",
                        "reason": "too_many_pixels",
                        "error": str(exc),
                    }
                    continue
                except DecodeError as exc:
                    results[key] = {"status": "failed", "reason": exc.reason, "error": str(exc)}
                    continue
                result: dict[str, Any] = {
                    "width": image.width,
                    "height": image.height,
                    "decode_info": json.dumps(dict(image.info), sort_keys=True),
                }
                try:
                    result.update(self._score(image.rgb))
                except ScoringError as exc:
                    result.update(status="failed", reason=exc.reason, error=str(exc))
                results[key] = result
        for key in wanted - set(results):
            results[key] = {
                "status": "failed",
                "reason": "missing_from_shard",
                "error": f"{key} not in {tar_path}",
            }
        return results

    def _score(self, rgb) -> dict[str, Any]:
        if not self.cascade:
            return {"scores": self.metrics.score(rgb)}
        scores: dict[str, float] = {}
        for i, name in enumerate(self.order):
            scores.update(self.metrics.score(rgb, [name]))
            if name in self.cascade:
                op, threshold = self.cascade[name]
                failed = scores[name] > threshold if op == "max" else scores[name] < threshold
                skipped = self.order[i + 1 :]
                if failed and skipped:
                    return {"scores": scores, "reason": "cascade_skipped_" + "_".join(skipped)}
        return {"scores": scores}

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
    ):
        import torch

        from curation.metrics.loader import MetricSet

        if threads:
            torch.set_num_threads(threads)
        self.max_pixels = max_pixels
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

        wanted = set(keys)
        results: dict[str, dict[str, Any]] = {}
        with tarfile.open(tar_path) as tar:
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
                    result["scores"] = self.metrics.score(image.rgb)
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

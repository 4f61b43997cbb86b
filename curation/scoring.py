"""Score image files with the quality metrics: what ``curate score FILE...`` runs.

Plain functions, no CLI framework and no Ray: the scoring stage uses the same pieces
(:func:`curation.decode.decode_image` and :class:`curation.metrics.loader.MetricSet`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from curation.metrics.registry import DEFAULT_METRICS

if TYPE_CHECKING:
    from curation.metrics.loader import MetricSet


def score_files(
    paths: Iterable[str | Path],
    metrics: str | Sequence[str] | MetricSet = DEFAULT_METRICS,
    device: str = "cpu",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    weights_dir: str | Path | None = None,
    nima_checkpoint: str | Path | None = None,
    allow_download: bool = False,
) -> list[dict[str, Any]]:
    """Decode and score each file; one JSON-ready record per path, in order.

    Args:
        paths: image files.
        metrics: ``"niqe,brisque,nima"``, a list of names, or an already loaded MetricSet.
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
        max_pixels: larger images are refused (reason ``too_many_pixels``).
        weights_dir, nima_checkpoint, allow_download: see
            :func:`curation.metrics.loader.load_metric`.

    Returns:
        ``{"path", "width", "height", "decode", "scores"}`` for a scored image, where
        ``decode`` is the :class:`curation.decode.DecodeInfo` dict and ``scores`` maps
        metric name to score; ``{"path", "width", "height", "reason", "error"}`` for a file
        that could not be read (``read_error``), decoded (``decode_error``,
        ``too_many_pixels``) or scored (``<metric>_input_too_small``, ...). Width and height
        are those of the upright image (None when not decoded).

    Raises:
        MissingWeightsError: a metric's weights file is missing (before any file is read).
        UnknownMetricError: an unknown metric name.
    """
    from curation.metrics.loader import MetricSet, ScoringError

    if not isinstance(metrics, MetricSet):
        metrics = MetricSet(
            metrics,
            device=device,
            weights_dir=weights_dir,
            nima_checkpoint=nima_checkpoint,
            allow_download=allow_download,
        )
    records = []
    for path in paths:
        record: dict[str, Any] = {"path": str(path), "width": None, "height": None}
        records.append(record)
        try:
            decoded = decode_image(Path(path).read_bytes(), max_pixels=max_pixels)
        except OSError as e:
            record.update(reason="read_error", error=f"{type(e).__name__}: {e}")
            continue
        except DecodeError as e:
            record.update(reason=e.reason, error=str(e))
            continue
        record.update(width=decoded.width, height=decoded.height, decode=dict(decoded.info))
        try:
            record["scores"] = metrics.score(decoded.rgb)
        except ScoringError as e:
            record.update(reason=e.reason, error=str(e))
    return records

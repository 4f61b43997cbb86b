"""Which image-quality metrics curate knows, and what each one needs.

This module is imported by the CLI for ``--help`` and flag validation, so it must stay
light: no torch, no pyiqa. Loading lives in :mod:`curation.metrics.loader`.

Adding a pyiqa metric is one entry in ``METRICS``, for example MUSIQ (KonIQ weights)::

    MetricSpec(
        name="musiq", pyiqa_id="musiq", lower_better=False, score_range=(0.0, 100.0),
        weights_file="musiq_koniq_ckpt-e95806b9.pth", uses_gpu=True, min_side=32,
    )
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One no-reference quality metric as pyiqa implements it.

    Attributes:
        name: our name, used in ``--metrics`` and as the ``score_<name>`` column.
        pyiqa_id: the id passed to ``pyiqa.create_metric``.
        lower_better: True when a smaller score means a better image (NIQE, BRISQUE).
        score_range: typical (low, high) scores, as pyiqa documents them; not a hard bound
            (BRISQUE goes slightly below 0 on clean images).
        weights_file: file name of the parameters pyiqa loads (the name pyiqa itself
            downloads), or None when the metric has no learned parameters.
        uses_gpu: whether scoring on a CUDA device helps.
        min_side: smallest image side in pixels the metric computes on; smaller inputs fail
            (NIQE: no complete 96x96 block) or give meaningless numbers (BRISQUE < 16 px).
        timm_backbone_in_checkpoint: the weights file holds every parameter, timm backbone
            included, so the backbone is built without its ImageNet download (NIMA).
    """

    name: str
    pyiqa_id: str
    lower_better: bool
    score_range: tuple[float, float]
    weights_file: str | None
    uses_gpu: bool
    min_side: int
    #: Median CPU seconds for one 1024 px image on 2 threads (FIELD-NOTES): cascade order.
    cpu_seconds_1024: float
    timm_backbone_in_checkpoint: bool = False


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        # NIQE: distance of natural-scene statistics from a pristine model, on 96x96 blocks.
        MetricSpec(
            name="niqe",
            pyiqa_id="niqe",
            lower_better=True,
            score_range=(0.0, 100.0),
            weights_file="niqe_modelparameters.mat",
            uses_gpu=True,
            min_side=96,
            cpu_seconds_1024=0.52,
        ),
        # BRISQUE: SVR on spatial natural-scene statistics (LIVE model).
        MetricSpec(
            name="brisque",
            pyiqa_id="brisque",
            lower_better=True,
            score_range=(0.0, 150.0),
            weights_file="brisque_svm_weights.pth",
            uses_gpu=True,
            min_side=16,
            cpu_seconds_1024=0.17,
        ),
        # NIMA: Inception-ResNet-v2 trained on AVA; resizes to 299 px, so any size works.
        MetricSpec(
            name="nima",
            pyiqa_id="nima",
            lower_better=False,
            score_range=(0.0, 10.0),
            weights_file="NIMA_InceptionV2_ava-b0c77c00.pth",
            uses_gpu=True,
            min_side=1,
            cpu_seconds_1024=0.25,
            timm_backbone_in_checkpoint=True,
        ),
    )
}

DEFAULT_METRICS: tuple[str, ...] = ("niqe", "brisque", "nima")


class UnknownMetricError(ValueError):
    """A metric name that is not in :data:`METRICS`."""


def get_spec(name: str) -> MetricSpec:
    """Return the entry for ``name`` (case-insensitive) or raise :class:`UnknownMetricError`."""
    try:
        return METRICS[name.strip().lower()]
    except KeyError:
        known = ", ".join(METRICS)
        raise UnknownMetricError(f"unknown metric {name!r}; known metrics: {known}") from None


def parse_metrics(value: str | Iterable[str]) -> list[MetricSpec]:
    """Parse ``"niqe,brisque,nima"`` (or a list of names) into specs, in the given order.

    Names are case-insensitive, blanks around commas are ignored and duplicates are
    dropped. An empty list or any unknown name raises :class:`UnknownMetricError`, naming
    every unknown entry and the known ones.
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise UnknownMetricError(f"no metric given; known metrics: {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UnknownMetricError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; "
            f"known metrics: {', '.join(METRICS)}"
        )
    return [METRICS[n] for n in dict.fromkeys(names)]

"""Build pyiqa metrics without the network, and score decoded images with them.

Weights are looked up by the file name pyiqa itself uses, in this order:
``weights_dir`` (argument), ``$CURATE_IQA_WEIGHTS``, the files vendored in this package
(NIQE, BRISQUE), pyiqa's own download cache (``$TORCH_HOME/hub/pyiqa``). Nothing is
downloaded unless ``allow_download=True``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation.metrics.registry import DEFAULT_METRICS, MetricSpec, get_spec, parse_metrics

if TYPE_CHECKING:
    import torch

WEIGHTS_ENV = "CURATE_IQA_WEIGHTS"
VENDORED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CPU_MAX_BATCH = 1  # batching does not speed up CPU scoring and multiplies memory (NIQE)
CUDA_MAX_BATCH = 4  # same-size images per forward pass; an OOM falls back to one at a time


class MissingWeightsError(FileNotFoundError):
    """A metric's weights file is not on disk and downloading is not allowed.

    The message names the file, where it was looked for, where to put it, and how to run
    without this metric or with downloads allowed.
    """

    def __init__(
        self,
        metric: str,
        file_name: str,
        searched: Sequence[Path],
        others: Sequence[str],
        checkpoint: Path | None = None,
    ):
        self.metric = metric
        self.file_name = file_name
        nima_flag = " (or pass its path with --nima-checkpoint)" if metric == "nima" else ""
        if checkpoint is not None:
            where = f"the checkpoint given for it, {checkpoint}, does not exist"
            fix = f"Pass an existing file, or put {file_name!r} in the folder named by ${WEIGHTS_ENV}."
        else:
            where = "it is in none of:\n" + "\n".join(f"  {d}" for d in searched)
            fix = (
                f"Put it in one of those folders or in a folder named by ${WEIGHTS_ENV}{nima_flag}."
            )
        without = ",".join(others) if others else "<other metrics>"
        super().__init__(
            f"metric {metric!r} needs the weights file {file_name!r}; {where}\n{fix}\n"
            f"To run without it: --metrics {without}\n"
            "To let pyiqa download it once (network needed): --allow-download"
        )


class ScoringError(Exception):
    """One image could not be scored by one metric.

    ``reason`` is ``<metric>_input_too_small``, ``<metric>_out_of_memory``,
    ``<metric>_not_finite`` (flat images give NaN) or ``<metric>_failed``.
    """

    def __init__(self, metric: str, kind: str, message: str):
        super().__init__(f"{metric}: {message}")
        self.metric = metric
        self.reason = f"{metric}_{kind}"


def weights_search_path(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for weights files, first match wins."""
    import torch.hub

    dirs = [weights_dir, os.environ.get(WEIGHTS_ENV), VENDORED_WEIGHTS_DIR]
    dirs.append(Path(torch.hub.get_dir()) / "pyiqa")  # where pyiqa's downloads land
    return [Path(d) for d in dirs if d]


def find_weights(
    spec: MetricSpec,
    *,
    weights_dir: str | Path | None = None,
    nima_checkpoint: str | Path | None = None,
) -> Path | None:
    """Path of ``spec``'s weights file, or None when it is not on disk (or not needed)."""
    if spec.name == "nima" and nima_checkpoint is not None:
        path = Path(nima_checkpoint)
        return path if path.is_file() else None
    if spec.weights_file is None:
        return None
    for folder in weights_search_path(weights_dir):
        if (folder / spec.weights_file).is_file():
            return folder / spec.weights_file
    return None


def load_metric(
    name: str,
    *,
    device: str | torch.device,
    weights_dir: str | Path | None = None,
    nima_checkpoint: str | Path | None = None,
    allow_download: bool = False,
) -> torch.nn.Module:
    """Build pyiqa's metric ``name`` on ``device`` from local weights.

    Returns pyiqa's ``InferenceModel``: call it on a float NCHW RGB tensor in [0, 1] to get
    one score per image. Raises :class:`MissingWeightsError` when the weights file is
    missing and ``allow_download`` is False; with ``allow_download`` pyiqa fetches it into
    its cache (``$TORCH_HOME/hub/pyiqa``), where later offline runs find it.
    """
    spec = get_spec(name)
    path = find_weights(spec, weights_dir=weights_dir, nima_checkpoint=nima_checkpoint)
    if spec.weights_file is not None and path is None and not allow_download:
        others = [m for m in DEFAULT_METRICS if m != spec.name]
        raise _missing(spec, weights_dir, nima_checkpoint, others)

    if not allow_download:
        _hub_offline()
    import pyiqa

    kwargs = {"pretrained_model_path": str(path)} if path is not None else {}
    backbone = (
        _timm_without_pretrained() if spec.timm_backbone_in_checkpoint else contextlib.nullcontext()
    )
    # pyiqa prints "Loading pretrained model ..." to stdout, which would corrupt JSON output.
    with backbone, contextlib.redirect_stdout(sys.stderr):
        return pyiqa.create_metric(spec.pyiqa_id, device=device, **kwargs)


def _missing(
    spec: MetricSpec,
    weights_dir: str | Path | None,
    nima_checkpoint: str | Path | None,
    others: Sequence[str],
) -> MissingWeightsError:
    checkpoint = Path(nima_checkpoint) if spec.name == "nima" and nima_checkpoint else None
    return MissingWeightsError(
        spec.name,
        spec.weights_file or "",
        weights_search_path(weights_dir),
        others,
        checkpoint=checkpoint,
    )


def _hub_offline() -> None:
    """Make Hugging Face Hub calls fail at once instead of trying the network.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, when it is imported (pyiqa imports
    it), so the module's constant is set too when it is already loaded.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


_TIMM_LOCK = threading.Lock()


@contextlib.contextmanager
def _timm_without_pretrained() -> Iterator[None]:
    """Build timm backbones without their ImageNet weights while a metric is constructed.

    pyiqa's NIMA calls ``timm.create_model(..., pretrained=True)`` (hard-coded), which
    downloads ImageNet weights that the NIMA checkpoint then overwrites entirely (it is
    loaded with strict=True). Only archs that call ``timm.create_model`` through the
    module attribute are affected; the lock keeps concurrent constructions apart.
    """
    import timm

    original = timm.create_model

    def create_model(model_name, pretrained=False, **kwargs):
        return original(model_name, pretrained=False, **kwargs)

    with _TIMM_LOCK:
        timm.create_model = create_model
        try:
            yield
        finally:
            timm.create_model = original


class MetricSet:
    """Load the requested metrics once; score decoded RGB uint8 images with all of them.

    On CPU images are scored one at a time (batching does not help there and multiplies
    memory); on CUDA, same-size images are scored in batches of ``max_batch``.
    """

    def __init__(
        self,
        metrics: str | Sequence[str] = DEFAULT_METRICS,
        *,
        device: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
        nima_checkpoint: str | Path | None = None,
        allow_download: bool = False,
        max_batch: int | None = None,
    ):
        import torch

        self.specs = parse_metrics(metrics)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        default_batch = CUDA_MAX_BATCH if self.device.type == "cuda" else CPU_MAX_BATCH
        self.max_batch = max_batch or default_batch

        if not allow_download:
            # Check every file before the slow loading, so the hint names what can run.
            missing = [
                s
                for s in self.specs
                if s.weights_file
                and find_weights(s, weights_dir=weights_dir, nima_checkpoint=nima_checkpoint)
                is None
            ]
            if missing:
                others = [s.name for s in self.specs if s not in missing]
                raise _missing(missing[0], weights_dir, nima_checkpoint, others)
        self.models = {
            spec.name: load_metric(
                spec.name,
                device=self.device,
                weights_dir=weights_dir,
                nima_checkpoint=nima_checkpoint,
                allow_download=allow_download,
            )
            for spec in self.specs
        }

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def score(self, rgb: np.ndarray, names: Sequence[str] | None = None) -> dict[str, float]:
        """Scores of one HxWx3 uint8 RGB image, ``{metric name: score}``.

        ``names`` restricts scoring to some of the loaded metrics (the cascade scores one
        metric at a time). Raises :class:`ScoringError` (with a snake_case ``reason``) when a
        metric cannot score this image.
        """
        _check_rgb(rgb)
        self._check_size(rgb.shape, names)
        return self._forward(rgb[None], names)[0]

    def score_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, float] | ScoringError]:
        """Scores of several images, in order; a failed image gets its ScoringError.

        Same-size images share a forward pass on CUDA (up to ``max_batch``); when a batch
        fails (out of memory, one flat image) its images are scored one at a time.
        """
        for rgb in images:
            _check_rgb(rgb)
        results: list[dict[str, float] | ScoringError | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, rgb in enumerate(images):
            by_shape.setdefault(rgb.shape, []).append(i)
        for shape, indices in by_shape.items():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                if len(chunk) > 1:
                    try:
                        self._check_size(shape)
                        scores = self._forward(np.stack([images[i] for i in chunk]))
                    except ScoringError:
                        self._release_memory()  # then score this chunk one by one
                    else:
                        for i, s in zip(chunk, scores, strict=True):
                            results[i] = s
                        continue
                for i in chunk:
                    try:
                        results[i] = self.score(images[i])
                    except ScoringError as e:
                        results[i] = e
        return results  # type: ignore[return-value]

    def _check_size(self, shape: tuple[int, ...], names: Sequence[str] | None = None) -> None:
        height, width = shape[:2]
        for spec in self.specs:
            if names is not None and spec.name not in names:
                continue
            if min(height, width) < spec.min_side:
                raise ScoringError(
                    spec.name,
                    "input_too_small",
                    f"{width}x{height} px; needs at least {spec.min_side} px on the short side",
                )

    def _forward(
        self, batch: np.ndarray, names: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        """Run every metric on an NHWC uint8 batch -> one dict per image."""
        import torch

        # torch.from_numpy warns on read-only arrays (decoded images, Ray's object store);
        # a uint8 copy is cheap next to the float conversion.
        if not batch.flags.writeable:
            batch = batch.copy()
        # uint8 crosses to the device (4x less than float), then [0, 1] float NCHW as pyiqa
        # expects; the same values as pyiqa's own imread2tensor (to_tensor: x / 255).
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).contiguous()
        x = x.float().div_(255.0)
        results: list[dict[str, float]] = [{} for _ in range(len(batch))]
        for name, model in self.models.items():
            if names is not None and name not in names:
                continue
            try:
                with torch.inference_mode():
                    values = model(x).detach().double().flatten().cpu().tolist()
            except (torch.OutOfMemoryError, MemoryError) as e:
                raise ScoringError(name, "out_of_memory", f"{type(e).__name__}: {e}") from e
            except Exception as e:  # pyiqa raises assorted types on degenerate input
                kind = "out_of_memory" if "can't allocate memory" in str(e) else "failed"
                raise ScoringError(name, kind, f"{type(e).__name__}: {e}") from e
            if len(values) != len(batch):
                raise ScoringError(name, "failed", f"{len(values)} scores for {len(batch)} images")
            for result, value in zip(results, values, strict=True):
                if not math.isfinite(value):
                    raise ScoringError(name, "not_finite", f"score is {value} (flat image?)")
                result[name] = value
        return results

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3):
        raise TypeError("expected an HxWx3 uint8 RGB numpy array (see curation.decode)")
    if rgb.shape[2] != 3:
        raise TypeError(f"expected 3 channels, got shape {rgb.shape}")

"""Typed pipeline configuration, loaded from YAML and overridden with ``--set key=value``.

Unknown keys are errors (``extra="forbid"``): a typo in a threshold must not silently fall back
to a default. Paths inside a pipeline file are relative to that file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


class ConfigError(ValueError):
    """A pipeline file or override the user must fix; the message is one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    """One input: a LAION-style Parquet URL list or a local folder of images."""

    name: str
    kind: Literal["laion", "folder"]
    #: Parquet file(s), folders of Parquet files or globs (laion); a folder tree (folder).
    path: list[str]
    url_col: str = "URL"
    caption_col: str | None = "TEXT"
    width_col: str = "WIDTH"
    height_col: str = "HEIGHT"
    #: Demo only: serve this folder from a loopback HTTP server while downloading, and fetch
    #: every URL under ``serve_prefix`` from it. Manifests keep the URLs as written.
    serve: str | None = None
    serve_prefix: str = "http://curate-demo.localhost/"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("source names may use letters, digits, '_', '-' and '.' only")
        return v

    @field_validator("path", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class DownloadConfig(_Strict):
    """Metadata prefilter and img2dataset settings."""

    min_side: int = Field(1024, ge=1, description="px; from WIDTH/HEIGHT before, decoded after")
    max_pwatermark: float | None = Field(None, ge=0, le=1)
    max_punsafe: float | None = Field(None, ge=0, le=1)
    samples_per_shard: int = Field(10000, ge=1)
    processes: int = Field(2, ge=1)
    threads: int = Field(32, ge=1)
    timeout_s: int = Field(10, ge=1)
    retries: int = Field(0, ge=0)
    #: Images declaring more pixels are refused before their pixels are decoded.
    max_image_pixels: int = Field(2**28, ge=1)
    user_agent_token: str | None = "curate"


class ScoreConfig(_Strict):
    """Quality scoring with pyiqa, one model load per Ray worker."""

    metrics: list[str] = ["niqe", "brisque", "nima"]
    #: auto: a GPU per worker when the Ray cluster has GPUs, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: True: refuse to start unless every metric's weights are present. False: score with the
    #: metrics whose weights exist and say loudly which were left out.
    require_all_metrics: bool = True
    cascade: bool = False
    weights_dir: str | None = None
    nima_checkpoint: str | None = None
    allow_download: bool = False
    #: Larger images are rejected (too_many_pixels): NIQE needs ~0.4 GB per megapixel on CPU.
    max_pixels: int = Field(36_000_000, ge=1)
    #: Workers (Ray actors, one model load each). None: sized from what the cluster reports,
    #: as many as fit on its alive nodes: one per ``gpus_per_worker`` GPUs on cuda, else one
    #: per ``threads_per_worker`` CPUs of each node.
    workers: int | None = Field(None, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    #: CPUs each worker reserves in Ray. None: ``threads_per_worker``, halved when a node has
    #: fewer than 4 CPUs (pools of whole-CPU workers filling a 2-core node stalled).
    cpus_per_worker: float | None = Field(None, gt=0)
    #: GPUs each worker reserves on cuda; below 1 lets workers share a GPU.
    gpus_per_worker: float = Field(1.0, gt=0, le=1)
    #: Times a shard is redone after its worker died (node lost, process killed); each death
    #: starts a replacement worker. The driver writes the results, so a redone shard is
    #: written once.
    max_retries: int = Field(3, ge=0)


class FilterConfig(_Strict):
    """Thresholds; None means not applied. The paper does not publish its values."""

    max_niqe: float | None = None
    max_brisque: float | None = None
    min_nima: float | None = None
    min_side: int = Field(1024, ge=1, description="px, as decoded")


class PatchConfig(_Strict):
    size: int = Field(512, ge=8)
    border: Literal["center", "drop"] = "center"
    flat_cell: int = Field(32, ge=2)
    flat_threshold: float = Field(150.0, ge=0)
    max_flat_fraction: float = Field(0.5, ge=0, le=1)
    format: Literal["png", "jpg", "webp"] = "png"
    samples_per_shard: int = Field(1000, ge=1)
    #: CPUs each part's Ray task reserves. None: 1, or 0.5 when a node has fewer than 4 CPUs.
    cpus_per_task: float | None = Field(None, gt=0)
    #: Times Ray reruns a part whose node or worker process died (its outputs are rewritten
    #: from scratch under per-attempt temp names).
    max_retries: int = Field(3, ge=0)


class RayConfig(_Strict):
    #: None: an embedded local Ray; "auto", "HOST:PORT" or "ray://...": an existing cluster.
    address: str | None = None


class PipelineConfig(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    sources: list[SourceConfig] = Field(min_length=1)
    download: DownloadConfig = DownloadConfig()
    score: ScoreConfig = ScoreConfig()
    filter: FilterConfig = FilterConfig()
    patch: PatchConfig = PatchConfig()
    ray: RayConfig = RayConfig()

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        return v


def resolve_pipeline_path(name_or_path: str) -> Path:
    """A bundled pipeline name (``demo``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"pipeline file {path} does not exist")
        return path.resolve()
    bundled = PIPELINES_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        names = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))
        raise ConfigError(
            f"unknown pipeline {name_or_path!r}: use a YAML path or one of {', '.join(names)}"
        )
    return bundled


def _apply_override(data: dict, item: str) -> None:
    """Apply ``a.b.c=value``; the value is parsed as YAML (numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a list index")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {dotted}: {last} is not a list index")
        node[int(last)] = value
    else:
        node[last] = value


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{origin}: {loc}: {msg}")
    return "\n".join(lines)


def load_pipeline(name_or_path: str = "demo", overrides: list[str] | None = None) -> PipelineConfig:
    """Load, override and validate a pipeline; source paths become absolute."""
    path = resolve_pipeline_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a pipeline file must be a mapping of sections")
    for item in overrides or []:
        _apply_override(data, item)
    origin = str(path) + (" (with --set overrides)" if overrides else "")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None
    base = path.parent
    for src in cfg.sources:
        src.path = [_absolute(p, base) for p in src.path]
        if src.serve:
            src.serve = _absolute(src.serve, base)
    for attr in ("weights_dir", "nima_checkpoint"):
        if getattr(cfg.score, attr):
            setattr(cfg.score, attr, _absolute(getattr(cfg.score, attr), base))
    return cfg


def _absolute(p: str, base: Path) -> str:
    """Relative paths are relative to ``base``; URLs (s3://, gs://, file://) are kept."""
    if "://" in p:
        return p
    return str((base / p).resolve()) if not Path(p).is_absolute() else p


def source_from_input(spec: str) -> SourceConfig:
    """``--input``: ``folder:PATH`` for an image tree, else Parquet file(s)/folder/glob."""
    if spec.startswith("folder:"):
        path = _absolute(spec.removeprefix("folder:"), Path.cwd())
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return SourceConfig(name=name or "folder", kind="folder", path=[path])
    return SourceConfig(name="input", kind="laion", path=[_absolute(spec, Path.cwd())])


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (what a run saves beside its outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

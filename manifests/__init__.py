"""The manifest contract between curation and training (pyarrow only; no Ray, no torch)."""

from manifests.io import ManifestError, find_manifests, read_manifest, write_manifest
from manifests.schema import IMAGE, PATCH, SCHEMA_VERSION, base_schema, schema_with_scores
from manifests.stats import format_stats, manifest_stats
from manifests.validate import ValidationReport, validate

__all__ = [
    "IMAGE",
    "PATCH",
    "SCHEMA_VERSION",
    "ManifestError",
    "ValidationReport",
    "base_schema",
    "find_manifests",
    "format_stats",
    "manifest_stats",
    "read_manifest",
    "schema_with_scores",
    "validate",
    "write_manifest",
]

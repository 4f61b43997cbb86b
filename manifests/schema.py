"""The manifest contract between curation and training: versioned Arrow schemas.

Two kinds of manifest exist, each stored as Parquet files beside the WebDataset tars they
describe:

- the *image* manifest: one row per input (URL row or local file), whatever became of it;
- the *patch* manifest: one row per 512x512 tile cut from a kept image.

Every file carries its kind and schema version in the Parquet key-value metadata, so a reader
can refuse a file it does not understand instead of misreading it. Only pyarrow is imported
here: training reads manifests without Ray or the curation stages.
"""

from __future__ import annotations

import re

import pyarrow as pa

#: Parquet metadata keys stamped on every manifest file.
META_KIND = b"curate.manifest_kind"
META_VERSION = b"curate.schema_version"

IMAGE = "image"
PATCH = "patch"
KINDS = (IMAGE, PATCH)

#: Bump when a column changes meaning or type; readers refuse newer versions.
SCHEMA_VERSION = 1

#: Columns named ``score_<metric>`` (float64, nullable) may be added by the score stage.
SCORE_COLUMN = re.compile(r"^score_[a-z0-9_]+$")

IMAGE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),  # stable id: sha1 of source + url/path
    pa.field("source", pa.string(), nullable=False),  # source name from the pipeline config
    pa.field("url", pa.string(), nullable=False),  # original URL (or file:// path)
    pa.field("caption", pa.string()),
    pa.field("meta_width", pa.int64()),  # as declared by the input list
    pa.field("meta_height", pa.int64()),
    pa.field("width", pa.int64()),  # as decoded
    pa.field("height", pa.int64()),
    pa.field("bytes", pa.int64()),  # size of the stored image file
    pa.field("sha256", pa.string()),  # of the stored image bytes (the original bytes)
    pa.field("format", pa.string()),  # file extension of the real format: jpg, png, webp...
    pa.field("shard", pa.string()),  # tar holding <key>.<format>, relative to this file
    pa.field("decode_info", pa.string()),  # JSON: how the score stage decoded it (mode, bits...)
    pa.field("pwatermark", pa.float64()),
    pa.field("punsafe", pa.float64()),
    pa.field("similarity", pa.float64()),
    pa.field("extra", pa.string()),  # JSON object of the input row's other columns
    pa.field("stage", pa.string(), nullable=False),  # stage that set the status
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),  # snake_case, for rejections
    pa.field("error", pa.string()),  # free text, for failures
]

PATCH_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),  # <image key>_<y>_<x>
    pa.field("image_key", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("x", pa.int64(), nullable=False),
    pa.field("y", pa.int64(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("flat_fraction", pa.float64()),
    pa.field("shard", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("error", pa.string()),
]

#: Status values and what each requires: a reason (rejections) or an error (failures).
STATUSES: dict[str, dict[str, str | None]] = {
    IMAGE: {
        "downloaded": None,  # in a shard, not yet judged
        "prefiltered": "reason",  # removed from metadata before any download
        "rejected": "reason",  # removed by a stage after download
        "failed": "error",  # could not be fetched / decoded / scored
        "scored": None,
        "kept": None,
    },
    PATCH: {"kept": None, "rejected": "reason", "failed": "error"},
}

#: Statuses whose rows must point at a shard holding the sample.
IN_SHARD = {"downloaded", "scored", "kept"}


def base_schema(kind: str) -> pa.Schema:
    """The fixed columns of a manifest kind, stamped with kind and version."""
    fields = {IMAGE: IMAGE_FIELDS, PATCH: PATCH_FIELDS}[kind]
    return pa.schema(
        fields, metadata={META_KIND: kind.encode(), META_VERSION: str(SCHEMA_VERSION).encode()}
    )


def schema_with_scores(kind: str, metrics: list[str]) -> pa.Schema:
    """The base schema plus one nullable float64 ``score_<metric>`` column per metric."""
    schema = base_schema(kind)
    for name in metrics:
        schema = schema.append(pa.field(f"score_{name}", pa.float64()))
    return schema

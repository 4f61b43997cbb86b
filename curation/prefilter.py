"""The metadata prefilter: drop rows before any download, each with its reason.

Checks run in a fixed order and the first failing one names the reason, so a row has exactly
one reason and reruns agree.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.config import DownloadConfig

#: (reason, description) in the order they are checked.
REASONS = {
    "missing_url": "the row has no URL",
    "duplicate_url": "an earlier row of the same source has the same URL",
    "too_small_declared": "WIDTH or HEIGHT below download.min_side",
    "watermark_above_max": "pwatermark above download.max_pwatermark",
    "unsafe_above_max": "punsafe above download.max_punsafe",
}


def prefilter_reasons(rows: pa.Table, cfg: DownloadConfig) -> pa.Array:
    """One reason per row (null where the row passes). Unknown sizes/scores pass: checked later."""
    n = rows.num_rows
    checks = [
        ("missing_url", rows["_missing_url"]),
        ("duplicate_url", rows["_duplicate_url"]),
        (
            "too_small_declared",
            pc.less(pc.min_element_wise(rows["meta_width"], rows["meta_height"]), cfg.min_side),
        ),
    ]
    if cfg.max_pwatermark is not None:
        checks.append(("watermark_above_max", pc.greater(rows["pwatermark"], cfg.max_pwatermark)))
    if cfg.max_punsafe is not None:
        checks.append(("unsafe_above_max", pc.greater(rows["punsafe"], cfg.max_punsafe)))
    reasons = pa.nulls(n, pa.string())
    for reason, mask in checks:
        hit = pc.and_(pc.fill_null(mask, False), pc.is_null(reasons))
        reasons = pc.if_else(hit, pa.scalar(reason), reasons)
    return reasons

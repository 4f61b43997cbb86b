"""The environment that keeps the libraries under curate quiet and on this machine, for the
processes that drive them directly (tests, benchmarks). Apply it before they are imported:
several read it at import time. Stdlib only, so importing it costs nothing.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations (via img2dataset, pyiqa) checks PyPI
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray reports usage
    "HF_HUB_OFFLINE": "1",  # pyiqa / timm look up weights on the Hugging Face hub
    "WANDB_MODE": "disabled",  # img2dataset imports wandb
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Local Ray clusters listen on 127.0.0.1 only (see curation.ray_runtime.loopback_only).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def use_offline_env() -> None:
    """Set every variable of OFFLINE_ENV that is not set already."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)

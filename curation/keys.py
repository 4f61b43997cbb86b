"""Stable sample keys: derived from content identity, so reruns and other machines agree."""

from __future__ import annotations

import hashlib

KEY_HEX = 16  # 64 bits: collisions are negligible below billions of inputs


def sample_key(*parts: str) -> str:
    """A 16-hex-digit key from the NUL-joined parts (e.g. source name and URL)."""
    return hashlib.sha1("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:KEY_HEX]

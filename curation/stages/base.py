"""What every stage shares: its output folder, its fingerprint check and its summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from manifests.storage import Location, write_text_atomic


class RunDirError(RuntimeError):
    """The output folder holds something this run must not touch (another run's data)."""


@dataclass
class StageSummary:
    stage: str
    counts: dict[str, int] = field(default_factory=dict)  # "status" or "status/reason" -> n
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def write_json_atomic(path: Location, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_fingerprint(path: Location, settings: dict, what: str) -> None:
    """Refuse to mix two runs' data in one folder: record settings once, compare on reruns.

    ``settings`` are the inputs that decide the folder's content; a rerun with the same ones
    resumes, a rerun with others would silently mix results and is refused.
    """
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise RunDirError(
                f"{path.parent.parent} holds {what} made with other settings "
                f"({', '.join(changed)} differ); use a new --output, or delete that folder to redo it"
            )
    else:
        write_json_atomic(path, settings)

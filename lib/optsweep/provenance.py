"""What produced a result: code version, params hash, time. Recorded with every result file."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from . import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]


def code_version() -> str:
    """`git describe` of the checkout (with -dirty for uncommitted edits), or the package version."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = "unknown"
    return f"optsweep {__version__} ({described})"


def stable_hash(value: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable value that does not depend on key order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def provenance(params_hash: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "code_version": code_version(),
        "params_hash": params_hash,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }

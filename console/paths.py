"""Where the console keeps its state: one git-ignored folder of the project."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def state_dir() -> Path:
    """DRUGSYNC_STATE_DIR, or .drugsync/ at the project root."""
    configured = os.environ.get("DRUGSYNC_STATE_DIR")
    return Path(configured) if configured else PROJECT_ROOT / ".drugsync"


def cache_dir() -> Path:
    """Downloads kept across stacks (DRUGSYNC_CACHE_DIR, or .drugsync/cache)."""
    configured = os.environ.get("DRUGSYNC_CACHE_DIR")
    return Path(configured) if configured else PROJECT_ROOT / ".drugsync" / "cache"

"""Where cached artefacts live: ``$KUBESANDBOX_CACHE`` (default ``~/.cache/kubesandbox``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    configured = os.environ.get("KUBESANDBOX_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "kubesandbox"

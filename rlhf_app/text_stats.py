"""Statistics of generated text that evaluation logs and the report shows; plain Python, no torch."""

from __future__ import annotations

import re
from typing import Optional


WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words of a text as every statistic here counts them: lower-cased `\\w+` runs."""
    return WORD.findall(str(text).lower())


def distinct_word_share(texts: list[str]) -> Optional[float]:
    """Distinct words / words over all texts (lower-cased); None when there are no words.

    A policy that games its reward by repeating one word ("great great great") drives it to ~0.
    """
    all_words = [w for t in texts for w in words(t)]
    return len(set(all_words)) / len(all_words) if all_words else None

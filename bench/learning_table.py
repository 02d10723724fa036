"""The README's results tables, made from the committed bench/learning.json and bench/race.json.

    .venv/bin/python bench/learning_table.py                   # print the tables
    .venv/bin/python bench/learning_table.py --write README.md # replace the block between the markers

Per recipe, the entry NAME@mean (bench/learning_figures.py seed_mean) when there is one: each figure as
mean ± sample standard deviation over its seeds; otherwise the plain NAME entry of an older one-seed run, whose
figures are labelled "one seed". A recipe or figure with no entry says "not measured yet": nothing is filled
in. The race (bench/race.py) gives each side's held-out figure at the end of its run (mean ± sd over seeds) and
the verdict of ours against TRL's GRPOTrainer (bench/race_summary.py); a recipe whose settings changed after its
race ran says which (since_run). `make bench-learning` rewrites the block;
tests/test_bench_learning.py checks that the README holds what this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from learning_figures import derived, flatten  # noqa: E402
from learning_plan import VARIANTS  # noqa: E402

BEGIN = "<!-- results tables: made by bench/learning_table.py from bench/learning.json and bench/race.json -->"
END = "<!-- end of results tables -->"
NOT_MEASURED = "not measured yet"
PHASED = tuple(f"phases/phases/{p}/generated/accuracy_strict" for p in ("base", "sft", "ppo"))
# recipe -> [(figure, {n} in it from this path, the paths start -> end, (change path, x100 when a share))]
FIGURES = {
    "imdb-offline": [("positive share, {n} held-out prompts", "before/n", ("before/positive_share",
                      "after/positive_share"), ("change/positive_share", 100))],
    "gsm8k-offline": [("strict accuracy, {n} generated problems", "generated/before/n", (
                          "generated/before/accuracy_strict", "generated/after/accuracy_strict"),
                       ("generated/change/accuracy_strict", 100)),
                      ("ends with `#### N`, {n} real GSM8K items", "before/n", ("before/format_end_share",
                       "after/format_end_share"), ("change/format_end_share", 100))],
    "gsm8k-pipeline-offline": [("greedy strict accuracy, {n} generated problems, base → SFT → PPO",
                                "phases/phases/base/generated/n", PHASED, None)],
    "gsm8k-tools-offline": [("greedy strict accuracy, {n} generated problems, base → SFT → PPO",
                             "phases/phases/base/generated/n", PHASED, None)],
    "imdb-rlhf-offline": [("gold positive share, {n} held-out prompts, start → gold-best", "gold/held_out_prompts",
                           ("gold/start/positive_share", "gold/gold_best/positive_share"),
                           ("gold/gold_best_gain_points", 1)),
                          ("reward model's pairwise accuracy, {n} held-out pairs", "rm/held_out_pairs",
                           ("rm/accuracy",), None)],
}
VARIANT_TITLES = {"fp32": "float32 training"}  # a variant's row: "`gsm8k-offline`, float32 training"
PPO_PREFIX = {"imdb-rlhf-offline": "ppo/"}  # where the PPO stage's figures are
# (column, path under the PPO prefix or the entry, format)
# (column, path under the PPO prefix or the entry, number format, unit)
COMMON = (("distinct-word share, end / start", "distinct_word_share_ratio", ".2f", "×"),
          ("KL at the end", "kl_final", ".1f", ""), ("s/update", "s_per_update/update_s", ".1f", ""))
RUN = (("wall time", "wall_s", 1 / 60, ".1f", " min"), ("peak memory", "peak_rss_mib", 1 / 1024, ".1f", " GiB"))
# bench/race_config.py TARGETS and HELD_OUT; GSM8K's figure pools both sets by size (bench/race_child.py pooled)
RACED = {"imdb-offline": "positive share, 256 held-out prompts",
         "gsm8k-offline": "strict accuracy, 300 generated problems and the 55 real items pooled"}
HEAD = ["recipe", "seeds", "held-out figure", "start → end", "change (points)",
        *(c[0] for c in COMMON), *(c[0] for c in RUN)]


def view(recipes: dict, recipe: str) -> tuple[str, dict] | None:
    """(seeds in words, {path: (value, sd or None)}) of a recipe's NAME@mean, else its one-seed NAME; None."""
    mean = recipes.get(f"{recipe}@mean")
    if mean and mean.get("seeds"):
        seeds = mean["seeds"]
        failed = f", {mean['failed']} failed" if mean.get("failed") else ""
        words = (f"one seed ({seeds[0]})" if len(seeds) == 1 else f"{len(seeds)} ({', '.join(map(str, seeds))})")
        sd = mean.get("sd", {})
        return words + failed, {p: (mean[p], sd.get(p) if len(seeds) > 1 else None) for p in sd}
    one = recipes.get(recipe)
    if one and not one.get("rc"):
        return "one seed", {p: (v, None) for p, v in derived(flatten(one)).items()}
    return None


def _share(x: tuple | None) -> str:
    if x is None:
        return NOT_MEASURED
    value, sd = x
    return f"{100 * value:.1f}%" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _num(x: tuple | None, spec: str, unit: str = "", scale: float = 1.0) -> str:
    """(value, sd or None) -> "8.5 ± 0.3 min" ("8.5 min" for one seed); `spec` a format spec (".1f", "+.1f")."""
    if x is None:
        return NOT_MEASURED
    value, sd = x
    spread = f" ± {format(sd * scale, spec.lstrip('+'))}" if sd is not None else ""
    return f"{format(value * scale, spec)}{spread}{unit}"


def recipe_rows(recipes: dict, recipe: str, variant: str | None = None) -> list[list[str]]:
    """The table rows of one recipe (or of its `variant`'s entries, NAME@VARIANT): one per figure, the time and
    memory columns on the first."""
    got = view(recipes, f"{recipe}@{variant}" if variant else recipe)
    title = f"`{recipe}`" + (f", {VARIANT_TITLES[variant]}" if variant else "")
    rows = []
    for i, (label, n_path, paths, change) in enumerate(FIGURES[recipe]):
        if got is None:
            rows.append([title if i == 0 else "", "", label.replace("{n} ", ""), NOT_MEASURED,
                         *[""] * (len(HEAD) - 4)])
            continue
        seeds, fig = got
        n = fig.get(n_path)
        row = [title if i == 0 else "", seeds if i == 0 else "",
               label.format(n=int(n[0])) if n else label.replace("{n} ", ""),
               " → ".join(_share(fig.get(p)) for p in paths),
               _num(fig.get(change[0]), "+.1f", "", change[1]) if change else ""]
        if i == 0:
            pre = PPO_PREFIX.get(recipe, "")
            row += [_num(fig.get(pre + path), spec, unit) for _, path, spec, unit in COMMON]
            row += [_num(fig.get(path), spec, unit, scale) for _, path, scale, spec, unit in RUN]
        else:
            row += [""] * (len(COMMON) + len(RUN))
        rows.append(row)
    return rows


def race_rows(race: dict) -> list[list[str]]:
    """Per raced recipe: each side's figure at the end of its run, and each rlhf_app side (the recipe as shipped,
    then TRL's settings) against TRL's GRPOTrainer in time to the target."""
    rows = []
    for recipe, figure in RACED.items():
        summary = race.get("recipes", {}).get(recipe, {}).get("summary")
        if not summary:
            rows.append([f"`{recipe}`", figure, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED])
            continue
        cells = []
        for side in ("ours", "ours-grpo", "trl"):
            f = summary["final"].get(side)
            if f is None:
                cells.append(NOT_MEASURED)
                continue
            start = f.get("start", summary.get("start"))  # the side's own seeds' start
            start = _share((start, None)) + " → " if start is not None else ""
            seeds = "one seed" if f["n"] == 1 else f"{f['n']} seeds"
            cells.append(f"{start}{_share((f['value'], f['sd'] if f['n'] > 1 else None))} after {f['time_s']:.0f} s "
                         f"({seeds})")
        changed = since_run(recipe, race["recipes"][recipe].get("runs", {}))
        rows.append([f"`{recipe}`", figure + (f" (raced before the recipe changed: {changed}; `bench/race.py "
                     f"--only {race_key(recipe)}` reruns it)" if changed else ""), *cells,
                     _verdicts(summary["pairs"])])
    return rows


def race_key(recipe: str) -> str:
    import race_config

    return {name: key for key, name in race_config.RECIPES.items()}[recipe]


def since_run(recipe: str, runs: dict) -> str:
    """The race settings (bench/race_config.py settings) in which the recipe's `ours` runs differ from the recipe
    today, 'key old → new, ...'; '' when they match (or no run recorded them)."""
    import race_config

    today = race_config.settings(race_config.side_config(recipe, "ours", 0))
    ran = [r["settings"] for r in runs.get("ours", {}).values() if "settings" in r]
    return ", ".join(f"{key} {' / '.join(sorted({str(r.get(key)) for r in ran}))} → {today[key]}"
                     for key in today if any(r.get(key) != today[key] for r in ran))


def _verdicts(pairs: dict) -> str:
    """Each rlhf_app side against TRL on the seeds both ran, the shipped recipe first: 'ours vs TRL, seed 0,
    target T: verdict'; over several seeds the verdict on the mean curves, then each seed's against its own target."""
    against = [(k.split(" vs ")[0], pairs[k]) for k in ("ours vs trl", "ours-grpo vs trl") if k in pairs]
    if not against:
        return NOT_MEASURED

    def one(side: str, p: dict) -> str:
        seeds, per = p.get("seeds") or [], p.get("per_seed") or {}
        where = f", seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else ""
        target = _share((p["target"], None))
        if len(per) < 2:
            return f"{side} vs TRL{where}, target {target}: {p['verdict']}"
        each = "; ".join(f"seed {s}, target {_share((v['target'], None))}: {v['verdict']}" for s, v in per.items())
        return f"{side} vs TRL{where}, mean curves to {target}: {p['verdict']}; {each}"
    return ". ".join(one(side, p) for side, p in against)


def _rows(recipes: dict) -> list[list[str]]:
    """Every recipe's rows, each followed by those of its variants measured (bench/learning_plan.py VARIANTS)."""
    measured = lambda name, v: f"{name}@{v}@mean" in recipes or f"{name}@{v}" in recipes  # noqa: E731
    return [row for name in FIGURES for v in (None, *(v for v in VARIANTS if name in VARIANTS[v] and measured(name, v)))
            for row in recipe_rows(recipes, name, v)]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def tables(learning: dict, race: dict) -> str:
    """The block between BEGIN and END (markers included)."""
    recipes = learning.get("recipes", {})
    lines = [BEGIN, "", *_table(HEAD, _rows(recipes)), "",
             "The race against TRL's GRPOTrainer (`bench/race.py`): each side's held-out figure at the end of its "
             "training time, and the time to the target of each rlhf_app side against TRL's, on the seeds both ran (over "
             "several: on the mean curves, then seed by seed). `ours`: the recipe "
             "as shipped (imdb-offline: GRPO, KL in the reward; gsm8k-offline: PPO); `ours, as TRL` (`ours-grpo`): "
             "GRPO with the KL in the loss, TRL's settings field by field (bench/race_config.py).", "",
             *_table(["recipe", "figure", "ours", "ours, as TRL", "TRL GRPOTrainer",
                      "against TRL, time to the target"],
                     race_rows(race)), "", END]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with the block between BEGIN and END replaced; ValueError when the markers are missing."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the markers are missing: put {BEGIN!r} and {END!r} where the tables go")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the block in this file (README.md)")
    parser.add_argument("--learning", type=Path, default=BENCH / "learning.json")
    parser.add_argument("--race", type=Path, default=BENCH / "race.json")
    args = parser.parse_args(argv)
    block = tables(_load(args.learning), _load(args.race))
    if args.write is None:
        print(block)
        return
    try:
        args.write.write_text(replace_block(args.write.read_text(), block))
    except ValueError as err:
        raise SystemExit(f"error: {args.write}: {err}") from None
    print(f"[learning-table] wrote the results tables into {args.write}")


if __name__ == "__main__":
    main(sys.argv[1:])

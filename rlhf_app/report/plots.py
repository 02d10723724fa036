"""The run report's figures: the logged diagnostics over updates, and the critic's values along
two completions. Each `plot_*` writes one PNG and says whether there was anything to draw.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

# Figure (not pyplot) renders with the Agg canvas and leaves no global backend state behind.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# (title, [(metric key, legend label)], y label): one panel each, skipped when no key is logged.
PANELS = [
    ("Total reward (score − KL penalty)", [("objective/rlhf_reward", "rlhf reward")], "reward"),
    ("External score", [("objective/scores", "per update")], "score"),
    ("KL to reference", [("objective/kl", "KL")], "nats / sequence"),
    ("Policy entropy", [("objective/entropy", "entropy")], "nats / sequence"),
    ("Value loss", [("loss/value_avg", "value loss")], "loss"),
    ("Policy loss", [("loss/policy_avg", "policy loss")], "loss"),
    ("Clip fractions", [("policy/clipfrac_avg", "policy"), ("val/clipfrac_avg", "value")], "fraction"),
    ("Approx. KL old → new policy", [("policy/approxkl_avg", "approx KL")], "nats"),
    ("Explained variance (critic)", [("val/explained_variance", "explained var.")], "fraction"),
    ("Mean response length", [("val/mean_response_length", "length")], "tokens"),
    ("Completions ending in EOS", [("val/eos_fraction", "EOS fraction")], "fraction"),
    ("KL coefficient", [("kl_coef", "kl_coef")], "β"),
]


def series(rows: list[dict], key: str) -> list[float]:
    """`key` of every row as floats, NaN where a row lacks it (a gap in the plot)."""
    return [float(r[key]) if r.get(key) is not None else math.nan for r in rows]


def cumulative_mean(values: list[float]) -> list[float]:
    """Running mean of the finite values so far (NaN until the first one)."""
    out, total, count = [], 0.0, 0
    for v in values:
        if math.isfinite(v):
            total, count = total + v, count + 1
        out.append(total / count if count else math.nan)
    return out


def _plain(text: str) -> str:
    """Text safe for matplotlib labels: `$` would start mathtext, newlines would break layout."""
    return text.replace("$", r"\$").replace("\n", "\\n")


def reward_panels(metrics: list[dict]) -> list[tuple]:
    """Panels for keys that depend on the run: each reward function's mean (rewards/<name>/mean)
    and the held-out scores of eval_steps (eval/...)."""
    keys = sorted({k for r in metrics for k in r})
    per_function = [(k, k.split("/", 1)[1].rsplit("/", 1)[0]) for k in keys if re.fullmatch(r"rewards/.+/mean", k)]
    held_out = [(k, k.removeprefix("eval/")) for k in keys if k.startswith("eval/") and not k.endswith("/std")]
    return [p for p in (("Reward per function (mean)", per_function, "reward"),
                        ("Held-out evaluation (eval_steps)", held_out, "score")) if p[1]]


def plot_diagnostics(metrics: list[dict], path: Path) -> bool:
    """Grid of the logged diagnostics over updates into `path`; False when nothing is logged."""
    x = [r.get("step", i + 1) for i, r in enumerate(metrics)]
    panels = [p for p in PANELS if any(any(k in r for r in metrics) for k, _ in p[1])] + reward_panels(metrics)
    if not panels:
        return False
    cols, rows = 3, math.ceil(len(panels) / 3)
    height = 2.9 * rows
    fig = Figure(figsize=(4.2 * cols, height))
    # Fixed margins in inches, not layout="constrained", whose solver took two thirds of the plot's time
    # (~2 of 3 s a report on a 2-core CPU, every run writes one).
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.3 / height, bottom=0.5 / height, wspace=0.3, hspace=0.55)
    for i, (title, keys, ylabel) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key, label in keys:
            if key.startswith("eval/"):  # logged every eval_steps updates: plot only those points
                points = [(r.get("step", i + 1), r[key]) for i, r in enumerate(metrics) if r.get(key) is not None]
                ax.plot(*zip(*points), lw=1.2, label=label, marker="o", ms=3)
            elif any(key in r for r in metrics):
                ax.plot(x, series(metrics, key), lw=1.2, label=label, marker="o" if len(x) <= 30 else None, ms=3)
        if keys[0][0] == "objective/scores":
            ax.plot(x, cumulative_mean(series(metrics, "objective/scores")), lw=2, label="cumulative mean")
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=8)
        ax.set(xlabel="update", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def gold_points(metrics: list[dict]) -> list[tuple[int, float, float, float]]:
    """(update, KL, proxy, gold) of every evaluation with a gold score (reward.gold); the KL is that update's
    objective/kl (the rollout's KL to the reference, summed over tokens)."""
    return [(r.get("step", i + 1), float(r.get("objective/kl", math.nan)), float(r["eval/proxy"]), float(r["eval/gold"]))
            for i, r in enumerate(metrics) if r.get("eval/gold") is not None and r.get("eval/proxy") is not None]


def plot_gold(metrics: list[dict], best_step: int | None, path: Path) -> bool:
    """Proxy and gold against the KL and against the update (twin axes: their scales differ), the update
    where gold peaked starred; False when no evaluation has a gold score."""
    points = gold_points(metrics)
    if not points:
        return False
    fig = Figure(figsize=(12.6, 4.2), layout="constrained")
    for i, label in enumerate(("KL to reference (nats / sequence)", "update")):
        steps, kls, proxy, gold = zip(*sorted(points, key=lambda p: (p[1 - i], p[0])))  # a line along x
        x = kls if i == 0 else steps
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(x, proxy, marker="o", ms=3, color="tab:blue", label="proxy (trained reward)")
        ax.set(xlabel=label, ylabel="proxy")
        twin = ax.twinx()
        twin.plot(x, gold, marker="s", ms=3, color="tab:orange", label="gold")
        twin.set_ylabel("gold")
        if best_step in steps:
            j = steps.index(best_step)
            twin.plot([x[j]], [gold[j]], marker="*", ms=16, color="tab:red", ls="none",
                      label=f"gold peak: update {best_step} (gold-best/)")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=3)
        ax.set_title(f"Proxy and gold against the {'KL' if i == 0 else 'update'}", fontsize=10)
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def plot_values(values: dict, path: Path) -> bool:
    """Critic value estimates along the high- and low-reward completion, one row each."""
    cases = [(name, values[name]) for name in ("high", "low") if values.get(name, {}).get("tokens")]
    if not cases:
        return False
    longest = max(len(c["tokens"]) for _, c in cases)
    fig = Figure(figsize=(min(max(8.0, 0.28 * longest), 30.0), 3.4 * len(cases)), layout="constrained")
    axes = fig.subplots(len(cases), 1, sharey=True, squeeze=False)[:, 0]
    for ax, (name, case), color in zip(axes, cases, ("tab:green", "tab:red")):
        tokens, vals = case["tokens"], case["values"]
        ax.plot(range(len(vals)), vals, marker="o", ms=3, color=color, label="value estimate")
        if case.get("score") is not None:
            ax.axhline(case["score"], color=color, ls="--", lw=1, label=f"final score {case['score']:.3g}")
        step = max(1, math.ceil(len(tokens) / 80))  # at most ~80 readable tick labels
        ax.set_xticks(range(0, len(tokens), step))
        ax.set_xticklabels([_plain(t).replace(" ", "␣") for t in tokens[::step]], rotation=90, fontsize=8)
        prompt = _plain(str(case.get("prompt", "")))[:70]
        ax.set(xlabel="completion token", ylabel="critic value")
        ax.set_title(f"{name.capitalize()}-reward completion — prompt: {prompt!r}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True

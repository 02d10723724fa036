"""The race's arithmetic (bench/race.py), plain Python: mean curves over seeds, time to a target, the ratios.
A pair of sides is compared on the seeds both ran.

A run is a dict with "points": [{"update", "episodes", "time_s", "all": {metric: value}}] (time_s: training
wall time, evaluation excluded). A side's mean curve averages its seeds at each update all of them reached.
Time to a target: the training time of the first evaluated point at or above it (so it is known to the
snapshot spacing). The ratio a/b compares two sides' times; when b never reaches it, b's run either lasted
at least 2x a's time ("never reached within 2x our time") or stopped before (then only a bound is known).
Times compare only on one CPU: a seed whose two runs name different hosts (bench/outputs.py host(); or one
names its host and the other, older, does not) says so in its verdict.
"""

from __future__ import annotations

import math

PAIRS = (("ours", "trl"), ("ours-grpo", "trl"), ("ours", "ours-grpo"))
TIME_FACTOR = 2.0  # "never reached within 2x our time"
TARGET_RATIO = 0.5  # the target: ours reaches it in <= 0.5x TRL's time


def mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def curve(run: dict, metric: str) -> list[dict]:
    return [{"update": p["update"], "episodes": p["episodes"], "time_s": p["time_s"], "value": p["all"][metric]}
            for p in run["points"] if metric in p.get("all", {})]


def mean_curve(runs: list[dict], metric: str) -> list[dict]:
    """At each update every run evaluated: mean time, mean ± sd of `metric`, n runs."""
    curves = [{c["update"]: c for c in curve(r, metric)} for r in runs]
    if not curves:
        return []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    out = []
    for u in common:
        mean, sd = mean_sd([c[u]["value"] for c in curves])
        out.append({"update": u, "episodes": curves[0][u]["episodes"],
                    "time_s": round(mean_sd([c[u]["time_s"] for c in curves])[0], 1), "value": mean, "sd": sd,
                    "n": len(curves)})
    return out


def time_to(points: list[dict], target: float) -> float | None:
    """The time of the first point whose value is >= target, None if none is."""
    return next((p["time_s"] for p in points if p["value"] >= target - 1e-12), None)


def compare(a: str, b: str, points_a: list[dict], points_b: list[dict], target: float) -> dict:
    """Times of sides a and b to `target` on their curves, the ratio a/b and the verdict in words."""
    t_a, t_b = time_to(points_a, target), time_to(points_b, target)
    end_a = points_a[-1]["time_s"] if points_a else 0.0
    end_b = points_b[-1]["time_s"] if points_b else 0.0
    out = {"target": target, f"{a}_s": t_a, f"{b}_s": t_b, "ratio": None}
    if t_a is None and t_b is None:
        out["verdict"] = f"neither reached it ({a} ran {end_a:.0f} s, {b} {end_b:.0f} s)"
    elif t_a is None:
        out["verdict"] = f"{a} never reached it within its {end_a:.0f} s; {b} in {t_b:.0f} s"
    elif t_b is None:
        out["ratio_below"] = t_a / end_b if end_b else None
        out["verdict"] = (f"{b} never reached within {TIME_FACTOR:g}x {a}'s time ({a}: {t_a:.0f} s, {b} ran "
                          f"{end_b:.0f} s)" if end_b >= TIME_FACTOR * t_a else
                          f"{b} did not reach it within its run of {end_b:.0f} s (< {TIME_FACTOR:g}x {a}'s "
                          f"{t_a:.0f} s): ratio below {t_a / end_b:.2f}" if end_b else f"{b} has no points")
        out["never_within_2x"] = end_b >= TIME_FACTOR * t_a
    else:
        out["ratio"] = t_a / t_b if t_b else (0.0 if t_a == 0 else math.inf)
        out["verdict"] = f"{a} {t_a:.0f} s, {b} {t_b:.0f} s: ratio {out['ratio']:.2f}"
    return out


def pair_target(metric_gain: float | None, start: float, mean_a: list[dict], mean_b: list[dict]) -> float:
    """start + gain, or (gain None) the best mean value both sides reach."""
    if metric_gain is not None:
        return start + metric_gain
    return min(max(p["value"] for p in mean_a), max(p["value"] for p in mean_b))


def start_of(runs: list[dict], metric: str) -> float | None:
    """The mean of the runs' untrained points (update 0); None when none has one."""
    starts = [c[0]["value"] for r in runs for c in [curve(r, metric)] if c and c[0]["update"] == 0]
    return mean_sd(starts)[0] if starts else None


def summarise(runs: dict, metric: str, gain: float | None) -> dict:
    """runs: {side: {seed: run}} -> curves (mean ± sd per side over its seeds), the start, and per pair of sides,
    over the seeds both ran: the target, the times on their mean curves, the ratio and the per-seed times."""
    sides = {s: [r for _, r in sorted(by_seed.items())] for s, by_seed in runs.items() if by_seed}
    means = {s: mean_curve(rs, metric) for s, rs in sides.items()}
    out = {"metric": metric, "gain": gain, "curves": means,
           "mean_score": {s: mean_curve(rs, "mean_score") for s, rs in sides.items()},
           "start": start_of([r for rs in sides.values() for r in rs], metric),
           "start_equal_across_sides": _starts_equal(runs, metric),
           "final": {s: {"value": m[-1]["value"], "sd": m[-1]["sd"], "time_s": m[-1]["time_s"], "n": m[-1]["n"],
                         "start": m[0]["value"] if m[0]["update"] == 0 else None}
                     for s, m in means.items() if m},
           "pairs": {}}
    for a, b in PAIRS:
        # A pair compares the seeds both sides ran: a side's extra seeds would change its mean curve alone.
        seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        mean_a = mean_curve([runs[a][s] for s in seeds], metric)
        mean_b = mean_curve([runs[b][s] for s in seeds], metric)
        start = start_of([runs[side][s] for side in (a, b) for s in seeds], metric)
        if not mean_a or not mean_b or start is None:
            continue
        target = pair_target(gain, start, mean_a, mean_b)
        entry = compare(a, b, mean_a, mean_b, target)
        entry["seeds"] = seeds
        if gain is None and target <= start + 1e-12:
            entry["verdict"] = f"no gain to race on: the best {metric} both reach ({target:.3f}) is the start's"
        entry["per_seed"] = {}
        for seed in seeds:
            ca, cb = curve(runs[a][seed], metric), curve(runs[b][seed], metric)
            seed_target = ca[0]["value"] + gain if gain is not None and ca else target
            entry["per_seed"][seed] = compare(a, b, ca, cb, seed_target)
            if not same_host(runs[a][seed], runs[b][seed]):
                entry["per_seed"][seed]["verdict"] += (f" (timed on two hosts: {a} {host_name(runs[a][seed])}, "
                                                       f"{b} {host_name(runs[b][seed])})")
                entry.setdefault("seeds_across_hosts", []).append(seed)
        if entry.get("seeds_across_hosts"):
            entry["verdict"] += f" (seed{'s' if len(entry['seeds_across_hosts']) > 1 else ''} " \
                                f"{', '.join(entry['seeds_across_hosts'])} timed on two hosts)"
        ratios = [e["ratio"] for e in entry["per_seed"].values() if e["ratio"] is not None]
        if ratios:
            entry["ratio_per_seed_mean"], entry["ratio_per_seed_sd"] = mean_sd(ratios)
        if b == "trl":  # the target, for the recipe as shipped and for rlhf_app with TRL's settings
            entry["meets_target"] = (entry["ratio"] is not None and entry["ratio"] <= TARGET_RATIO) or \
                bool(entry.get("never_within_2x"))
        out["pairs"][f"{a} vs {b}"] = entry
    return out


def same_host(a: dict, b: dict) -> bool:
    """Whether two runs were timed on the same CPU as far as they say: runs from before hosts were recorded
    (neither names one) count as the same; one named against none, or two different, do not."""
    return a.get("host") == b.get("host")


def host_name(run: dict) -> str:
    h = run.get("host")
    if not h:
        return "on an unrecorded CPU"
    bf16 = "bfloat16 in hardware" if h.get("bf16") else "no bfloat16 hardware"
    family = f" family {h['family']} model {h['model']}" if "family" in h and "model" in h else ""
    return f"on {h['cpu']}{family}, {bf16}"


def _starts_equal(runs: dict, metric: str) -> bool | None:
    """Whether every side's untrained point scored the same at each seed (the same evaluation, the same
    base model: LoRA starts as the identity); None when no seed has two sides."""
    verdicts = []
    for seed in sorted({s for by_seed in runs.values() for s in by_seed}):
        starts = [c[0]["value"] for by_seed in runs.values() if seed in by_seed
                  for c in [curve(by_seed[seed], metric)] if c and c[0]["update"] == 0]
        if len(starts) > 1:
            verdicts.append(max(starts) - min(starts) < 1e-9)
    return all(verdicts) if verdicts else None


def lines(recipe: str, summary: dict) -> list[str]:
    """The summary in a few printed lines."""
    m = summary["metric"]
    out = [f"{recipe}: {m} at the start {summary['start']:.3f}" if summary["start"] is not None else f"{recipe}:"]
    for side, f in summary["final"].items():
        out.append(f"  {side}: {m} {f['value']:.3f} ± {f['sd']:.3f} after {f['time_s']:.0f} s ({f['n']} seeds)")
    for name, e in summary["pairs"].items():
        seeds = f" (seeds {', '.join(e['seeds'])})" if e.get("seeds") else ""
        out.append(f"  {name}{seeds}, target {e['target']:.3f}: {e['verdict']}")
    return out

"""The figures bench/learning.py reads back from a finished run folder, and their mean over seeds.

- `run_figures`: a PPO run (train.py, or a pipeline's ppo/): the held-out before/after (eval.json, with the
  distinct-word share of the completions and, with LoRA, the reference's NLL of them a token), KL and seconds per
  update by phase (metrics.jsonl), and `curve`;
- `eval_curve`: the held-out curve against training wall time. The `eval_steps` evaluations are the `eval/...`
  keys the trainer adds to that update's row of metrics.jsonl (rlhf_app/evaluation.py EvalEvery); the time at
  each is the sum of `time/update_s` up to that update, which the loop stops before the evaluation runs
  (rlhf_app/rl/loop.py), so evaluations, checkpoint saves and start-up are not in it. The start is eval.json's
  "before" at 0 s. Points as bench/race.py's: {"update", "episodes", "time_s", "kl", "all": {metric: value}};
- `sft_figures`: a supervised stage's steps, losses and training time;
- `seed_mean`: mean ± sample sd over seeds of every numeric figure of the entries, the per-seed values, and
  the mean curve (bench/race_summary.py's arithmetic); `derived` adds each before -> after change and the
  distinct-word share after / before to an entry first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from race_summary import mean_curve, mean_sd

PHASES = ("update_s", "generate_s", "reward_s", "forward_s", "train_s", "weight_sync_s")
# Not figures: run facts, samples and curves (lists are never averaged), the seed itself
SKIP = {"run", "samples", "seed", "rc", "threads", "log", "command"}


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def gsm8k_figures(entry: dict) -> dict:
    """Accuracy (strict, flexible) and well-formed share of one eval.json entry, as training reported them."""
    extra = entry.get("extra", {})
    keys = ("accuracy", "accuracy_strict", "accuracy_flexible", "format_share", "format_end_share")
    return {k: extra[k] for k in keys if k in extra}


def eval_curve(rows: list[dict], before: dict | None) -> list[dict]:
    """metrics.jsonl rows and eval.json's "before" -> the held-out curve (module docstring), one point per
    evaluation: the start (update 0, 0 s) when `before` is given, then every row holding eval/ keys."""
    from rlhf_app.evaluation import eval_metrics

    def strip(metrics: dict) -> dict:
        return {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")}

    points = [{"update": 0, "episodes": 0, "time_s": 0.0, "kl": 0.0, "all": strip(eval_metrics(before))}] \
        if before else []
    trained = 0.0
    for i, r in enumerate(rows):
        trained += r.get("time/update_s") or 0.0
        held = strip(r)
        if held:
            points.append({"update": r.get("step", i + 1), "episodes": r.get("episode"), "time_s": round(trained, 2),
                           "kl": r.get("objective/kl"), "all": held})
    return points


def run_figures(run_dir: Path) -> dict:
    """Before/after, KL, time figures and the held-out curve of a finished run folder."""
    from rlhf_app.report.page import load_jsonl
    from rlhf_app.text_stats import distinct_word_share

    evals = json.loads((run_dir / "eval.json").read_text())
    rows = load_jsonl(run_dir / "metrics.jsonl")
    out = {"updates": len(rows), "episodes": rows[-1].get("episode") if rows else None,
           "s_per_update": {p: _mean([r.get(f"time/{p}") for r in rows]) for p in PHASES},
           "train_s": round(sum(r.get("time/update_s") or 0.0 for r in rows), 1),
           "kl_final": rows[-1].get("objective/kl") if rows else None,
           "kl_last5_mean": _mean([r.get("objective/kl") for r in rows[-5:]]),
           "score_first": rows[0].get("objective/scores") if rows else None,
           "score_last5_mean": _mean([r.get("objective/scores") for r in rows[-5:]])}
    for when in ("before", "after"):
        entry = evals[when]
        completions = [s["completion"] for s in entry["samples"]]
        out[when] = {"mean_score": entry["mean_score"], **entry["extra"],
                     "distinct_word_share": distinct_word_share(completions), "n": len(completions),
                     **({"ref_nll": entry["ref_nll"]} if "ref_nll" in entry else {}),
                     "samples": entry["samples"][:4]}
    out["curve"] = eval_curve(rows, evals.get("before"))
    return out


def sft_figures(sft_dir: Path) -> dict:
    """The supervised stage: steps, losses (first logged, last, held-out) and its training time."""
    from rlhf_app.report.page import load_jsonl

    rows = load_jsonl(sft_dir / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    summary = next((r for r in rows if "train_runtime" in r), {})
    held = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return {"steps": rows[-1]["step"] if rows else 0, "loss_first": losses[0] if losses else None,
            "loss_last5_mean": _mean(losses[-5:]), "eval_loss": held[-1] if held else None,
            "train_runtime_s": summary.get("train_runtime")}


def against_no_tools(tools: dict, twin: dict) -> dict:
    """Each phase's strict accuracy with tools minus the no-tool twin's, per problem set, in standard errors of
    the difference (bench/phases.py's difference): {"sft/generated": {"diff", "se", "in_se"}, ...}."""
    from phases import difference

    out = {}
    a, b = tools.get("phases", {}).get("phases"), twin.get("phases", {}).get("phases")
    for phase in ("base", "sft", "ppo"):
        for name in ("generated", "real"):
            try:
                x, y = a[phase][name], b[phase][name]
            except (KeyError, TypeError):
                continue
            out[f"{phase}/{name}"] = difference(y, x, "accuracy_strict")
    return out


def flatten(entry: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a (nested) entry under its "a/b/c" path; lists, strings, booleans and SKIP left out."""
    out = {}
    for key, value in entry.items():
        if key in SKIP:
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = value
    return out


def derived(flat: dict[str, float]) -> dict[str, float]:
    """`flat` with, for every "P/before/X" that has a "P/after/X", "P/change/X" (after - before) and, for the
    distinct-word share, "P/distinct_word_share_ratio" (after / before). P may be empty, "generated", "ppo"."""
    out = dict(flat)
    for path, before in flat.items():
        head, _, key = path.rpartition("/")
        if key == "n" or not (head == "before" or head.endswith("/before")):
            continue
        prefix = head[: -len("before")]
        after = flat.get(f"{prefix}after/{key}")
        if after is None:
            continue
        out[f"{prefix}change/{key}"] = after - before
        if key == "distinct_word_share" and before:
            out[f"{prefix}distinct_word_share_ratio"] = after / before
    return out


def _curve(entry: dict) -> list[dict] | None:
    return entry.get("curve") or (entry.get("ppo") or {}).get("curve")


def seed_mean(entries: list[dict]) -> dict:
    """The mean over seeds of every figure of `entries` (NAME@seedS results), flat: {"seeds", "failed", path:
    mean, ..., "sd": {path: sample sd}, "per_seed": {path: {seed: value}}, "curve": {metric: mean curve}}.
    Entries that failed (rc != 0) are left out and counted; a figure missing from some seeds is averaged over
    those that have it (per_seed says which)."""
    done = sorted((e for e in entries if not e.get("rc")), key=lambda e: -1 if e.get("seed") is None else e["seed"])
    out = {"seeds": [e.get("seed") for e in done], "failed": len(entries) - len(done), "sd": {}, "per_seed": {}}
    flats = [(e.get("seed"), derived(flatten(e))) for e in done]
    for path in sorted({p for _, f in flats for p in f}):
        values = {seed: f[path] for seed, f in flats if path in f}
        out[path], out["sd"][path] = mean_sd(list(values.values()))
        out["per_seed"][path] = values
    curves = [{"points": c} for c in map(_curve, done) if c]
    if curves and len(curves) == len(done):
        metrics = set.intersection(*(set(p["all"]) for c in curves for p in c["points"]))
        out["curve"] = {m: mean_curve(curves, m) for m in sorted(metrics)}
    return out


def headline(recipe: str, r: dict) -> str:
    """One printed line of a finished run's figures."""
    import learning_rlhf

    if r.get("rc"):
        return f"{recipe}: failed, see {r['log']}"
    if "gold" in r:  # a pairs -> rm -> ppo pipeline
        return f"{recipe}: {learning_rlhf.headline(r)}"
    b, a = r["before"], r["after"]
    if "phases" in r and "phases" in r["phases"]:
        ph = r["phases"]["phases"]
        tools = [f"{name} tool calls/episode {ph['ppo'][name]['tool_calls_per_episode']:.2f}, success "
                 f"{ph['ppo'][name]['tool_call_success'] or 0:.3f}"
                 for name in ("generated", "real") if "tool_calls_per_episode" in ph["ppo"][name]]
        return f"{recipe}: {r['wall_s'] / 60:.1f} min + {r['phases_eval_s'] / 60:.1f} min of phase evals; " + "; ".join(
            [f"{name} strict " + " -> ".join(f"{ph[p][name]['accuracy_strict']:.3f}" for p in ("base", "sft", "ppo"))
             for name in ("generated", "real")] + tools)
    parts = [f"{r['wall_s'] / 60:.1f} min, {r['updates']} updates, {r['s_per_update']['update_s']:.1f} s/update, "
             f"peak {r['peak_rss_mib']:.0f} MiB, KL {r['kl_final']:.2f}"]
    for key in ("positive_share", "format_share", "format_end_share", "accuracy_strict", "accuracy_flexible",
                "distinct_word_share", "ref_nll"):
        if b.get(key) is not None and a.get(key) is not None:
            parts.append(f"{key} {b[key]:.3f} -> {a[key]:.3f}")
    return f"{recipe}: " + "; ".join(parts)

"""The figures of a pairs -> rm -> ppo pipeline run (imdb-rlhf-offline), read back from its folder for bench/learning.py.

- pairs: labelled pairs written, prompts, ties dropped, mean gold margin (pairs/pairs_summary.json);
- rm: training and held-out pairs, the held-out pairwise accuracy and mean margin (rm/rm_eval.json), first and
  last training loss and TRL's training accuracy (rm/metrics.jsonl);
- ppo: proxy (the reward model) and gold (reward.gold) with the gold's positive share at the start (eval.json's
  "before"), at the gold-best evaluation (gold.json's best) and at the end ("after"), each with the KL of that
  update, and every evaluation in between (the over-optimisation curve);
- the time of each stage: from its config.yaml (written when it claims its folder) to its final/ (written last),
  by modification time; what the pipeline spent loading before each claim is the rest of the wall time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

STAGES = ("pairs", "rm", "ppo")
GOLD_SHARE = "positive_share"  # the gold classifier's figure the targets are in


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(path: Path) -> list[dict]:
    from rlhf_app.report.page import load_jsonl

    return load_jsonl(path) if path.is_file() else []


def stage_seconds(run_dir: Path) -> dict:
    """{stage: seconds from config.yaml to final/} for the stages that finished."""
    out = {}
    for stage in STAGES:
        start, end = run_dir / stage / "config.yaml", run_dir / stage / "final"
        if start.is_file() and end.exists():
            out[stage] = round(end.stat().st_mtime - start.stat().st_mtime, 1)
    return out


def pairs_figures(pairs_dir: Path) -> dict:
    s = _load(pairs_dir / "pairs_summary.json") or {}
    keys = ("pairs", "prompts", "num_generations", "ties_dropped", "tie_threshold", "mean_margin", "labeller")
    return {k: s.get(k) for k in keys}


def rm_figures(rm_dir: Path, pairs_total: int | None) -> dict:
    """The reward model: held-out pairwise accuracy (ties half), its training pairs (the pairs less the seeded
    eval_fraction that `rlhf-app rm` holds out, capped by rm.num_train), losses and TRL's training accuracy."""
    from omegaconf import OmegaConf

    ev = _load(rm_dir / "rm_eval.json") or {}
    rows = _rows(rm_dir / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    acc = [r["accuracy"] for r in rows if "accuracy" in r]
    train = None
    if pairs_total is not None and (rm_dir / "config.yaml").is_file():
        rm = OmegaConf.load(rm_dir / "config.yaml").rm
        train = pairs_total - math.ceil(pairs_total * rm.eval_fraction)  # datasets' train_test_split rounds up
        train = min(train, rm.num_train) if rm.num_train is not None else train
    tail = acc[-5:]
    return {"accuracy": ev.get("accuracy"), "held_out_pairs": ev.get("pairs"), "train_pairs": train,
            "mean_margin": ev.get("mean_margin"), "steps": rows[-1]["step"] if rows else 0,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "train_accuracy_last5_mean": sum(tail) / len(tail) if tail else None,
            "train_runtime_s": next((r["train_runtime"] for r in rows if "train_runtime" in r), None)}


def _point(entry: dict | None, kl: float | None, step: int | None) -> dict | None:
    """One evaluation: the proxy (mean score), the gold, the gold's positive share, the KL."""
    if not entry:
        return None
    extra = entry.get("gold_extra") or {}
    proxy = entry.get("mean_score", entry.get("proxy"))
    gold = entry.get("gold_score", entry.get("gold"))
    return {"step": step, "proxy": proxy, "gold": gold, GOLD_SHARE: extra.get(GOLD_SHARE), "kl": kl}


def gold_figures(ppo_dir: Path) -> dict:
    """Proxy and gold at the start, at the gold-best evaluation and at the end; the curve; the gain at gold-best
    in points of the gold's positive share."""
    evals = _load(ppo_dir / "eval.json") or {}
    record = _load(ppo_dir / "gold.json") or {}
    rows = _rows(ppo_dir / "metrics.jsonl")
    kl_at = {r.get("step"): r.get("objective/kl") for r in rows}
    last = rows[-1].get("step") if rows else None
    best = record.get("best") or evals.get("gold_best")
    out = {"start": _point(evals.get("before"), 0.0, 0),
           "gold_best": _point(best, kl_at.get(best["step"]), best["step"]) if best else None,
           "end": _point(evals.get("after"), kl_at.get(last), last),
           "curve": [_point(e, kl_at.get(e["step"]), e["step"]) for e in record.get("evaluations", [])],
           "warned_at": record.get("warned_at"), "held_out_prompts": len((evals.get("before") or {}).get("samples", []))}
    start, peak = out["start"] or {}, out["gold_best"] or {}
    if start.get(GOLD_SHARE) is not None and peak.get(GOLD_SHARE) is not None:
        out["gold_best_gain_points"] = round(100 * (peak[GOLD_SHARE] - start[GOLD_SHARE]), 2)
    return out


def figures(run_dir: Path) -> dict:
    """Everything above for one pipeline folder."""
    pairs = pairs_figures(run_dir / "pairs")
    return {"pairs": pairs, "rm": rm_figures(run_dir / "rm", pairs.get("pairs")), "gold": gold_figures(run_dir / "ppo"),
            "stage_s": stage_seconds(run_dir)}


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def headline(r: dict) -> str:
    """'N pairs, RM 0.78 held out; positive 0.58 -> 0.83 at gold-best (update 25, KL 3.1) -> 0.80 at the end; ...'"""
    rm, gold = r.get("rm", {}), r.get("gold", {})
    start, peak, end = (gold.get(k) or {} for k in ("start", "gold_best", "end"))
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in r.get("stage_s", {}).items())
    return (f"{r['wall_s'] / 60:.1f} min ({stages} min), peak {r['peak_rss_mib']:.0f} MiB; "
            f"{r.get('pairs', {}).get('pairs')} labelled pairs, RM held-out accuracy {_fmt(rm.get('accuracy'))} "
            f"on {rm.get('held_out_pairs')}; gold {GOLD_SHARE} {_fmt(start.get(GOLD_SHARE))} -> "
            f"{_fmt(peak.get(GOLD_SHARE))} at gold-best (update {peak.get('step')}, KL {_fmt(peak.get('kl'), '.2f')}) "
            f"-> {_fmt(end.get(GOLD_SHARE))} at the end (KL {_fmt(end.get('kl'), '.2f')}); proxy "
            f"{_fmt(start.get('proxy'))} -> {_fmt(peak.get('proxy'))} -> {_fmt(end.get('proxy'))}")

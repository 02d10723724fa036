"""Pure functions from raw run results (ours.py / peer.py output) to figures, ratios and tables.

A run's timed updates are all but the first (warm-up: lazy init, allocator growth, first-call
dispatch). Figures per run are medians over its timed updates; figures per setting are medians over
the A/B pairs, and each pair also gives its own ratio ours / peer.
"""

from __future__ import annotations

import statistics

PHASES = ("generate_s", "reward_s", "forward_s", "train_s", "gc_s")
TARGETS = {"time_ratio": 0.6, "memory_ratio": 0.7}
REWARD_WINDOW = 3  # in-training reward: mean batch score over the last few updates (less noisy)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def run_figures(result: dict, batch: int) -> dict:
    """One run's figures: seconds per update (median, min, max), phase medians, throughput,
    peak memory, update-phase MFU and the reward reached."""
    timed = result["updates"][1:] or result["updates"]
    secs = [u["update_s"] for u in timed]
    # Update-phase FLOPs: 6 x trained parameters x tokens through forward+backward.
    flops = [6 * result["trained_params"] * u["trained_tokens"] / u["train_s"] for u in timed if u["train_s"] > 0]
    scores = [u["score"] for u in result["updates"]]
    return {
        "update_s": median(secs), "update_min_s": min(secs), "update_max_s": max(secs),
        **{p: median([u[p] for u in timed]) for p in PHASES},
        "update_no_gc_s": median([u["update_s"] - u["gc_s"] for u in timed]),
        "cpu_s": median([u["cpu_s"] for u in timed]),
        "episodes_per_s": batch / median(secs),
        "tokens_per_s": median([u["tokens"] / u["update_s"] for u in timed]),
        "peak_rss_mib": result["peak_rss_mib"],
        "update_flops": median(flops), "matmul_flops": result["matmul_flops"],
        "mfu": median(flops) / result["matmul_flops"],
        "score_first": scores[0], "score_final": sum(scores[-REWARD_WINDOW:]) / len(scores[-REWARD_WINDOW:]),
        "eval_after": result["eval_after"]["mean"], "eval_after_sem": result["eval_after"]["sem"],
        "updates": len(result["updates"]), "timed_updates": len(timed),
    }


def setting_summary(setting: dict, pairs: list[dict], eval_before: dict) -> dict:
    """Medians over pairs of each engine's figures, per-pair ratios ours / peer, and the targets.
    The reward target compares the held-out reward of the final policies (`eval_after`)."""
    ours = [p["ours"] for p in pairs]
    peer = [p["peer"] for p in pairs]
    time_ratios = [o["update_s"] / q["update_s"] for o, q in zip(ours, peer)]
    no_gc_ratios = [o["update_s"] / q["update_no_gc_s"] for o, q in zip(ours, peer)]
    # CPU seconds: what the process itself spent, so time slices lost to other work on a shared
    # machine do not count (cache and memory-bandwidth contention still do).
    cpu_ratios = [o["cpu_s"] / q["cpu_s"] for o, q in zip(ours, peer)]
    mem_ratios = [o["peak_rss_mib"] / q["peak_rss_mib"] for o, q in zip(ours, peer)]
    med = {name: {k: median([r[k] for r in runs]) for k in runs[0]} for name, runs in (("ours", ours), ("peer", peer))}
    for name, runs in (("ours", ours), ("peer", peer)):  # the range spans every timed update of the setting
        med[name]["update_min_s"] = min(r["update_min_s"] for r in runs)
        med[name]["update_max_s"] = max(r["update_max_s"] for r in runs)
    reward_gap = med["ours"]["eval_after"] - med["peer"]["eval_after"]
    reward_gap_sem = (med["ours"]["eval_after_sem"] ** 2 + med["peer"]["eval_after_sem"] ** 2) ** 0.5
    return {
        "setting": setting, "eval_before": eval_before, "ours": med["ours"], "peer": med["peer"], "pairs": pairs,
        "time_ratio": median(time_ratios), "time_ratios": time_ratios,
        "time_ratio_vs_peer_without_gc": median(no_gc_ratios), "cpu_time_ratio": median(cpu_ratios),
        "memory_ratio": median(mem_ratios), "memory_ratios": mem_ratios,
        "reward_gap": reward_gap, "reward_gap_sem": reward_gap_sem,
        "met": {"time": median(time_ratios) <= TARGETS["time_ratio"],
                "memory": median(mem_ratios) <= TARGETS["memory_ratio"],
                "reward": reward_gap >= 0},
    }


def label(setting: dict) -> str:
    return (f"{setting['model']} b{setting['batch']}×r{setting['response_length']} "
            f"e{setting['epochs']} m{setting['mini_batches']}")


def _phase_cell(fig: dict) -> str:
    return " / ".join(f"{fig[p]:.2f}" for p in PHASES)


def markdown_tables(summaries: list[dict]) -> str:
    """Two Markdown tables: figures per engine, then ratios and targets per setting."""
    lines = ["| setting | engine | s/update median (min–max) | gen / reward / fwd / train / gc s | "
             "episodes/s | tokens/s | peak RSS MiB | update MFU | batch reward first → last 3 | held-out reward "
             "before → after N |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for engine in ("ours", "peer"):
            f = s[engine]
            name = "rlhf_app" if engine == "ours" else "TRL 1.12 PPO"
            lines.append(
                f"| {label(s['setting'])} | {name} "
                f"| {f['update_s']:.2f} ({f['update_min_s']:.2f}–{f['update_max_s']:.2f}) | {_phase_cell(f)} "
                f"| {f['episodes_per_s']:.1f} | {f['tokens_per_s']:.0f} | {f['peak_rss_mib']:.0f} "
                f"| {f['mfu']:.0%} | {f['score_first']:+.3f} → {f['score_final']:+.3f} "
                f"| {s['eval_before']['mean']:+.3f} → {f['eval_after']:+.3f} ±{f['eval_after_sem']:.3f} "
                f"(N={f['updates']:.0f}) |")
    lines += ["", "| setting | time ours/peer (per pair) | ≤0.6 | vs peer without gc | CPU time ours/peer "
              "| memory ours/peer | ≤0.7 | held-out reward ours − peer | ≥0 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        pairs = ", ".join(f"{r:.2f}" for r in s["time_ratios"])
        yes = {True: "met", False: "missed"}
        lines.append(f"| {label(s['setting'])} | {s['time_ratio']:.2f} ({pairs}) | {yes[s['met']['time']]} "
                     f"| {s['time_ratio_vs_peer_without_gc']:.2f} | {s['cpu_time_ratio']:.2f} "
                     f"| {s['memory_ratio']:.2f} | {yes[s['met']['memory']]} "
                     f"| {s['reward_gap']:+.3f} ±{s['reward_gap_sem']:.3f} | {yes[s['met']['reward']]} |")
    return "\n".join(lines)

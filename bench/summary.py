"""Pure functions from raw run results (ours.py / peer.py output) to figures, ratios and tables.

A run's timed updates are all but the first (warm-up: lazy init, allocator growth, first-call
dispatch). Figures per run are medians over its timed updates; figures per setting are medians over
the A/B pairs, and each pair also gives its own ratio ours / peer.
"""

from __future__ import annotations

import statistics

PHASES = ("generate_s", "reward_s", "forward_s", "train_s", "gc_s")
# Time and memory against the peer (fp32 both); bf16 against rlhf_app fp32; MFU of the PPO epochs.
TARGETS = {"time_ratio": 0.45, "memory_ratio": 0.6, "bf16_speedup": 1.5, "mfu": 0.7}
REWARD_WINDOW = 3  # in-training reward: mean batch score over the last few updates (less noisy)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def run_figures(result: dict, batch: int) -> dict:
    """One run's figures: seconds per update (median, min, max), phase medians, throughput,
    peak memory, update-phase MFU and the reward reached."""
    timed = result["updates"][1:] or result["updates"]
    secs = [u["update_s"] for u in timed]
    # Update-phase FLOPs: 6 x trained parameters x tokens through forward+backward.
    # rlhf_app counts what it computes (LM head on response positions only); the peer's head runs everywhere.
    flops = [u.get("train_flops", 6 * result["trained_params"] * u["trained_tokens"]) / u["train_s"]
             for u in timed if u["train_s"] > 0]
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
    variants = {}  # rlhf_app variants (bf16, token budget) against rlhf_app fp32 of the same pair
    for name in setting.get("variants", ()):
        runs = [p[name] for p in pairs]
        fig = {k: median([r[k] for r in runs]) for k in runs[0]}
        fig["update_min_s"], fig["update_max_s"] = min(r["update_min_s"] for r in runs), max(r["update_max_s"] for r in runs)
        variants[name] = {"figures": fig,
                          "update_speedups": [o["update_s"] / r["update_s"] for o, r in zip(ours, runs)],
                          "train_speedups": [o["train_s"] / r["train_s"] for o, r in zip(ours, runs)],
                          "time_ratio_vs_peer": median([r["update_s"] / q["update_s"] for r, q in zip(runs, peer)]),
                          "memory_ratio_vs_peer": median([r["peak_rss_mib"] / q["peak_rss_mib"]
                                                          for r, q in zip(runs, peer)])}
    reward_gap = med["ours"]["eval_after"] - med["peer"]["eval_after"]
    reward_gap_sem = (med["ours"]["eval_after_sem"] ** 2 + med["peer"]["eval_after_sem"] ** 2) ** 0.5
    return {
        "setting": setting, "eval_before": eval_before, "ours": med["ours"], "peer": med["peer"], "pairs": pairs,
        "time_ratio": median(time_ratios), "time_ratios": time_ratios,
        "time_ratio_vs_peer_without_gc": median(no_gc_ratios), "cpu_time_ratio": median(cpu_ratios),
        "memory_ratio": median(mem_ratios), "memory_ratios": mem_ratios,
        "reward_gap": reward_gap, "reward_gap_sem": reward_gap_sem, "variants": variants,
        "met": {"time": median(time_ratios) <= TARGETS["time_ratio"],
                "memory": median(mem_ratios) <= TARGETS["memory_ratio"],
                "reward": reward_gap >= 0},
    }


def label(setting: dict) -> str:
    return (f"{setting['model']} b{setting['batch']}×r{setting['response_length']} "
            f"e{setting['epochs']} m{setting['mini_batches']}")


def variant_name(setting: dict, variant: str) -> str:
    return {"ours": "rlhf_app fp32", "peer": "TRL 1.12 PPO", "bf16": "rlhf_app bf16",
            "vllm": "rlhf_app fp32, vLLM rollouts"}.get(
        variant, f"rlhf_app fp32 ≤{setting.get('max_tokens')} tok/micro")


def _phase_cell(fig: dict) -> str:
    return " / ".join(f"{fig[p]:.2f}" for p in PHASES)


def markdown_tables(summaries: list[dict]) -> str:
    """Two Markdown tables: figures per engine, then ratios and targets per setting."""
    lines = ["| setting | engine | s/update median (min–max) | gen / reward / fwd / train / gc s | "
             "episodes/s | tokens/s | peak RSS MiB | update MFU | batch reward first → last 3 | held-out reward "
             "before → after N |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for engine in ("ours", "peer", *s.get("variants", {})):
            f = s[engine] if engine in ("ours", "peer") else s["variants"][engine]["figures"]
            name = variant_name(s["setting"], engine)
            lines.append(
                f"| {label(s['setting'])} | {name} "
                f"| {f['update_s']:.2f} ({f['update_min_s']:.2f}–{f['update_max_s']:.2f}) | {_phase_cell(f)} "
                f"| {f['episodes_per_s']:.1f} | {f['tokens_per_s']:.0f} | {f['peak_rss_mib']:.0f} "
                f"| {f['mfu']:.0%} | {f['score_first']:+.3f} → {f['score_final']:+.3f} "
                f"| {s['eval_before']['mean']:+.3f} → {f['eval_after']:+.3f} ±{f['eval_after_sem']:.3f} "
                f"(N={f['updates']:.0f}) |")
    lines += ["", f"| setting | time ours/peer (per pair) | ≤{TARGETS['time_ratio']} | vs peer without gc "
              f"| CPU time ours/peer | memory ours/peer | ≤{TARGETS['memory_ratio']} | held-out reward ours − peer | ≥0 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        pairs = ", ".join(f"{r:.2f}" for r in s["time_ratios"])
        yes = {True: "met", False: "missed"}
        lines.append(f"| {label(s['setting'])} | {s['time_ratio']:.2f} ({pairs}) | {yes[s['met']['time']]} "
                     f"| {s['time_ratio_vs_peer_without_gc']:.2f} | {s['cpu_time_ratio']:.2f} "
                     f"| {s['memory_ratio']:.2f} | {yes[s['met']['memory']]} "
                     f"| {s['reward_gap']:+.3f} ±{s['reward_gap_sem']:.3f} | {yes[s['met']['reward']]} |")
    rows = [(s, v, fig) for s in summaries for v, fig in s.get("variants", {}).items()]
    if rows:
        lines += ["", "| setting | variant | update speed-up vs rlhf_app fp32 (per pair) | PPO-epoch speed-up "
                  "| update MFU (same-precision mm peak) | time vs peer | memory vs peer |", "|---|---|---|---|---|---|---|"]
        for s, v, fig in rows:
            ups = ", ".join(f"{r:.2f}" for r in fig["update_speedups"])
            lines.append(f"| {label(s['setting'])} | {variant_name(s['setting'], v)} | {median(fig['update_speedups']):.2f}× "
                         f"({ups}) | {median(fig['train_speedups']):.2f}× | {fig['figures']['mfu']:.0%} "
                         f"| {fig['time_ratio_vs_peer']:.2f} | {fig['memory_ratio_vs_peer']:.2f} |")
    return "\n".join(lines)

"""A pipeline's report.html: one row per stage (state, headline figures) linking the stage's own report."""

from __future__ import annotations

import html
from pathlib import Path

from rlhf_app.report.page import CSS, _table, load_jsonl, load_optional

# The last logged value of these, where a stage logs them (SFT / reward model: TRL's names; PPO: ours).
HEADLINE = ("loss", "eval_loss", "mean_token_accuracy", "eval_accuracy", "accuracy",
            "objective/scores", "objective/kl")


def _figures(folder: Path) -> str:
    """'step 20; loss 1.23; held-out score 0.04 -> 0.31' from the files a stage wrote."""
    parts = []
    try:
        rows = load_jsonl(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
    except ValueError:
        rows = []
    last = {}
    for row in rows:  # the newest value of each key (a key may be logged on some rows only)
        last.update(row)
    if "step" in last:
        parts.append(f"step {last['step']}")
    parts += [f"{key} {last[key]:.4g}" for key in HEADLINE if isinstance(last.get(key), (int, float))][:3]
    evaluation = load_optional(folder / "eval.json") or {}
    scores = [evaluation[k]["mean_score"] for k in ("before", "after") if "mean_score" in evaluation.get(k, {})]
    if scores:
        parts.append("held-out score " + " -> ".join(f"{s:.4g}" for s in scores))
    if isinstance(evaluation.get("gold_best"), dict):  # a PPO stage with reward.gold
        best = evaluation["gold_best"]
        parts.append(f"gold peaked at update {best['step']} ({best['gold']:.4g}; kept in gold-best/)")
    pairs = load_optional(folder / "rm_eval.json") or {}  # the reward-model stage's held-out pairs
    if isinstance(pairs.get("accuracy"), (int, float)):
        parts.append(f"held-out pairwise accuracy {pairs['accuracy']:.3f} ({pairs.get('pairs')} pairs)")
    made = load_optional(folder / "pairs_summary.json") or {}  # the pairs stage's counts
    if isinstance(made.get("pairs"), int):
        margin = made.get("mean_margin")
        parts.append(f"{made['pairs']} pairs of {made.get('prompts')} prompts ({made.get('ties')} ties), mean margin "
                     + (f"{margin:.4g}" if isinstance(margin, (int, float)) else "-"))
    return "; ".join(parts)


def _state(folder: Path) -> str:
    from rlhf_app.run_dir.claim import finished_at, holds_run

    done = finished_at(folder)
    if done is not None:
        return "finished" + (f" at step {done}" if done >= 0 else "")
    return "in progress (run the pipeline again to continue)" if holds_run(folder) else "not started"


def write_pipeline_report(out: Path, stages: list[str]) -> Path:
    """output_dir/report.html for a pipeline of `stages`; returns its path."""
    from rlhf_app.run_dir.atomic import write_text

    out = Path(out)
    rows, links = [], []
    for name in stages:
        folder = out / name
        rows.append([name, _state(folder), _figures(folder)])
        page = folder / "report.html"
        links.append(f'<li><a href="{html.escape(name)}/report.html">{html.escape(name)}</a>'
                     if page.is_file() else f'<li>{html.escape(name)}: no report yet')
    body = (f"<h1>Pipeline report: {html.escape(out.resolve().name)}</h1>"
            f"<p>Stages in order: {html.escape(' → '.join(stages))}; each ran in its own folder.</p>"
            + _table(["stage", "state", "headline figures"], rows)
            + "<h2>Each stage's report</h2><ul>" + "".join(links) + "</ul>")
    path = out / "report.html"
    write_text(path, f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(out.name)}</title>"
                     f"<style>{CSS}</style></head><body>{body}</body></html>")
    return path

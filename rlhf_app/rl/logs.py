"""What one update writes: its metrics to the trackers and metrics.jsonl, and every sample_every updates
a table of samples (samples.jsonl, the trackers that show tables, optionally the console)."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm
from trl.trainer.utils import print_prompt_completions_sample

SAMPLE_COLUMNS = ("step", "prompt", "completion", "score")
EPISODE = "conversation"  # a tool episode's messages after the prompt (engines/tools.py; data/columns.EPISODE_COLUMN)


def episode_text(messages: list[dict]) -> str:
    """A tool episode as lines: `assistant: ...` (its text, then each call as name(arguments)), `tool NAME: ...`."""
    lines = []
    for m in messages:
        if m.get("role") == "tool":
            lines.append(f"tool {m.get('name', '')}: {m.get('content', '')}")
            continue
        calls = [f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})"
                 for c in m.get("tool_calls") or []]
        lines.append("assistant: " + " ".join([m.get("content") or ""] + [f"-> {c}" for c in calls]).strip())
    return "\n".join(lines)


def log_update(cfg, accelerator, output_dir: Path, step: int, episode: int, metrics: dict, rollout, scores,
               reward_log) -> None:
    """One update's metrics to the trackers and metrics.jsonl, and every sample_every updates its sample table."""
    if step % cfg.logging_steps == 0:  # the trackers; metrics.jsonl below keeps every update
        accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        with open(output_dir / "metrics.jsonl", "a") as f:
            # The loop's step and episode win over any same-named metric: resume truncates on them.
            f.write(json.dumps({"step": step, "episode": episode,
                                **{k: v for k, v in metrics.items() if k not in ("step", "episode")}}) + "\n")
        if cfg.sample_every and step % cfg.sample_every == 0:
            _log_samples(accelerator, output_dir / "samples.jsonl", step, rollout, scores, reward_log.extra,
                         console=cfg.log_completions and cfg.num_completions_to_print, reward=cfg.reward.name)


def _log_samples(accelerator, path: Path, step: int, rollout, scores, extra: dict | None = None,
                 limit: int = 8, console: int = 0, reward: str = "score") -> None:
    """A table of (prompt, completion, score, what the reward logged per completion, e.g. each
    function's score) into samples.jsonl, every tracker that shows tables and, with `console` > 0,
    its first `console` rows printed as a rich table (TRL's log_completions)."""
    # A reward's column named like one of ours goes under rewards/: the table's own step, prompt, ... stay.
    extra = {(f"rewards/{k}" if k in SAMPLE_COLUMNS else k): v for k, v in (extra or {}).items()
             if len(v) == len(rollout.completions)}
    columns = list(SAMPLE_COLUMNS) + list(extra)
    completions = rollout.completions
    if EPISODE in rollout.columns:  # tool episodes: the whole conversation, tool turns included
        completions = [episode_text(m) for m in rollout.columns[EPISODE]]
    rows = [[step, p, c, s, *(v[i] for v in extra.values())]
            for i, (p, c, s) in enumerate(zip(rollout.prompts, completions, scores.tolist()))][:limit]
    if console:
        shown = rows[:console]  # the first rows, not a random pick: printing never touches the RNG
        # One column per reward function, as TRL prints them; the total when none was logged.
        per_function = {k.removeprefix("rewards/"): v[:len(shown)] for k, v in extra.items()
                        if k.startswith("rewards/")} or {reward: [r[3] for r in shown]}
        with tqdm.external_write_mode():  # lift the progress bar while the table prints
            print_prompt_completions_sample([r[1] for r in shown], [r[2] for r in shown], per_function, None, step)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(dict(zip(columns, row))) + "\n")
    for tracker in accelerator.trackers:
        if tracker.name in ("wandb", "trackio") and hasattr(tracker, "log_table"):
            tracker.log_table("samples", columns=columns, data=rows, step=step)
        elif tracker.name == "tensorboard":
            lines = ["| prompt | completion | score |", "|---|---|---|"]
            lines += [f"| {p!r} | {c!r} | {s:.3f} |" for _, p, c, s, *_ in rows]
            tracker.writer.add_text("samples", "\n".join(lines), step)

"""Several reward functions as one, the way TRL's GRPOTrainer combines `reward_funcs`.

Each function gets TRL's arguments by keyword: `prompts`, `completions` (text, or
`[{"role": "assistant", "content": ...}]` when the prompts were conversations, then `prompts`
are the conversations), `completion_ids`, `trainer_state`, the hooks `log_extra` and `log_metric`,
and every dataset column. A `None` is "does not apply" (NaN); the score is the weighted sum over
the functions that did apply (TRL's nansum); an episode none applied to scores 0 and is named in
one line. Each function's mean and std go out through `log_metric` as `rewards/<name>/mean|std`.
The built-ins (toy, sentiment, gsm8k, variety) and reward models read text prompts and completions.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import nanstd

from rlhf_app.data.columns import CONVERSATION_COLUMN, EPISODE_COLUMN


def _ignore(*args, **kwargs) -> None:
    """The hooks' stand-in when the caller (a direct call, a test) collects nothing."""


def per_function(stats: torch.Tensor, names: list[str]) -> dict[str, float]:
    """(B, F) scores with NaN for None -> {"rewards/<name>/mean": ..., "/std": ...} over the non-NaN."""
    out = {}
    for i, name in enumerate(names):
        column = stats[:, i]
        out[f"rewards/{name}/mean"] = torch.nanmean(column).item()
        out[f"rewards/{name}/std"] = nanstd(column).item() if (~column.isnan()).sum() > 1 else 0.0
    return out


def weighted_nansum(stats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, F) per-function scores, NaN where a function returned None, (F,) weights -> (B,) scores."""
    return (stats * weights.unsqueeze(0)).nansum(dim=1)


def combine(names: list[str], fns: list, text_only: list[bool], weights: list[float] | None):
    """One reward callable over `fns` (already checked); `text_only[i]`: fn reads text, not TRL's messages."""
    w = torch.tensor(weights if weights is not None else [1.0] * len(fns), dtype=torch.float64)

    def reward_fn(prompts: list[str], completions: list[str], completion_ids=None, trainer_state=None,
                  log_extra=None, log_metric=None, **columns) -> list[float]:
        conversations = columns.pop(CONVERSATION_COLUMN, None)
        episodes = columns.pop(EPISODE_COLUMN, None)  # tool episodes: the messages after the prompt
        trl_prompts, trl_completions = prompts, completions
        if conversations is not None:
            trl_prompts = conversations
            trl_completions = episodes if episodes is not None else \
                [[{"role": "assistant", "content": c}] for c in completions]
        hooks = {"completion_ids": completion_ids, "trainer_state": trainer_state,
                 "log_extra": log_extra or _ignore, "log_metric": log_metric or _ignore}
        table = []
        for fn, text in zip(fns, text_only):
            p, c = (prompts, completions) if text else (trl_prompts, trl_completions)
            table.append([float("nan") if s is None else s for s in fn(p, c, **hooks, **columns)])
        stats = torch.tensor(table, dtype=torch.float64).T.reshape(len(completions), len(fns))
        none_applied = stats.isnan().all(dim=1)
        if none_applied.any():
            first = int(none_applied.nonzero()[0, 0])
            print(f"reward: every reward function ({', '.join(names)}) returned None for "
                  f"{int(none_applied.sum())} of {len(completions)} episodes, e.g. episode {first} (prompt "
                  f"{str(prompts[first])[:80]!r}): they score 0; return a number for them from one function")
        for key, value in per_function(stats, names).items():
            hooks["log_metric"](key, value)
        for i, name in enumerate(names):
            hooks["log_extra"](f"rewards/{name}", stats[:, i].tolist())
        # Each function's largest |weight · score| of this batch: what a non-finite update is traced back to.
        reward_fn.largest = dict(zip(names, (stats * w).abs().nan_to_num(0.0).amax(dim=0).tolist()))
        return weighted_nansum(stats, w).tolist()

    extras = [(name, getattr(fn, "extra_metrics", None)) for name, fn in zip(names, fns)]
    extras = [(name, e) for name, e in extras if callable(e)]
    if extras:
        def extra_metrics(prompts: list[str], completions: list[str], **columns) -> dict:
            """Each function's extra metrics, under `<name>/` when several functions have them."""
            columns.pop(CONVERSATION_COLUMN, None)
            columns.pop(EPISODE_COLUMN, None)
            out = {}
            for name, fn in extras:
                for key, value in fn(prompts, completions, **columns).items():
                    out[key if len(extras) == 1 else f"{name}/{key}"] = value
            return out

        reward_fn.extra_metrics = extra_metrics
    reward_fn.reward_names = list(names)
    reward_fn.largest = {}
    return reward_fn

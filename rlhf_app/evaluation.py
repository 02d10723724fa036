"""`eval_steps=N`: score the held-out split every N updates and after the last one.

The trainer calls `EvalEvery` after each update (its `on_update` hook); the returned `eval/...`
metrics join that update's row of metrics.jsonl and go to the trackers. Generation runs on the
main process with a fixed seed in a forked RNG, so training's random stream (and so resume) is
untouched; with rollout.engine=vllm on one process the engine samples (its requests seeded from
cfg.seed, its rollout counter untouched).
"""

from __future__ import annotations


def evaluate_policy(cfg, model, tokenizer, eval_ds, reward_fn, device, trainer_state=None, engine=None) -> dict:
    """Held-out evaluation with a fixed seed, leaving training's RNG untouched. `engine` (this
    process's vLLM engine, or None: the policy's own generate) samples once `model`'s weights are
    synced into it, with requests seeded from cfg.seed alone."""
    import torch

    from rlhf_app.rl import rollout

    sample = None
    if engine is not None:
        engine.sync_weights(model)
        sample = lambda rows: engine.generate(rows, seed=cfg.seed)  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return rollout.evaluate(model.policy, tokenizer, eval_ds, reward_fn, cfg.ppo, device,
                                trainer_state=trainer_state, sample=sample)


def eval_metrics(result: dict) -> dict[str, float]:
    """An evaluation result as flat `eval/...` metrics: mean score, extra metrics, rewards/<name>/mean,
    and the distinct-word share of the completions (a policy drifting into one phrase drives it down)."""
    from rlhf_app.text_stats import distinct_word_share

    share = distinct_word_share([s["completion"] for s in result["samples"]])
    return {"eval/mean_score": result["mean_score"], **{f"eval/{k}": v for k, v in result["extra"].items()},
            **({"eval/distinct_word_share": share} if share is not None else {})}


class EvalEvery:
    """The trainer's `on_update` hook for `eval_steps`: {} on other updates and other processes."""

    def __init__(self, cfg, accelerator, tokenizer, eval_ds, reward_fn, engine=None):
        self.cfg, self.accelerator, self.tokenizer = cfg, accelerator, tokenizer
        self.eval_ds, self.reward_fn, self.engine = eval_ds, reward_fn, engine

    def __call__(self, step: int, total_updates: int, model) -> dict:
        every = self.cfg.eval_steps
        if not every or (step % every and step != total_updates) or not self.accelerator.is_main_process:
            return {}
        from transformers import TrainerState

        unwrapped = self.accelerator.unwrap_model(model)
        result = evaluate_policy(self.cfg, unwrapped, self.tokenizer, self.eval_ds, self.reward_fn,
                                 self.accelerator.device, TrainerState(global_step=step, max_steps=total_updates),
                                 self.engine)
        return eval_metrics(result)

"""Scoring a policy on held-out prompts: before and after training, every `eval_steps`, and a saved one.

Generation runs with a fixed seed in a forked RNG, so training's random stream (and so resume) is
untouched; with rollout.engine=vllm on one process the engine samples (its requests seeded from
cfg.seed, its rollout counter untouched). `eval_steps=N`: the trainer calls `EvalEvery` after each
update (its `on_update` hook); the returned `eval/...` metrics join that update's row of
metrics.jsonl and go to the trackers. `evaluate_run` scores a saved policy (`rlhf-app eval`).

`reward.gold`: a second reward (`gold_fn`, built in run.py) scores the same held-out completions at every
evaluation; `GoldWatch` keeps the evaluations in gold.json, the policy of the best gold one in gold-best/, and
warns once when gold fell `reward.gold_patience` evaluations in a row while the proxy (the trained reward) rose.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_app.failures import hub_access


def evaluate_policy(cfg, model, tokenizer, eval_ds, reward_fn, device, trainer_state=None, engine=None,
                    gold_fn=None, batch_size: int = 32) -> dict:
    """Held-out evaluation with a fixed seed, leaving training's RNG untouched. `engine` (this
    process's vLLM engine, or None: the policy's own generate) samples once `model`'s weights are
    synced into it, with requests seeded from cfg.seed alone. `gold_fn`: the gold reward, also scored.
    `batch_size`: the rows sampled at once (with tools, each round of the loop waits for all of them).
    -> sample_and_score's {"mean_score", "extra", "samples", ...} and, with LoRA, "ref_nll" (ReferenceNLL)."""
    import torch

    from rlhf_app.engines.hf import generate
    from rlhf_app.engines.tools import tool_loop
    from rlhf_app.rl.rollout import sample_and_score

    tools = tool_loop(cfg, tokenizer)  # the run's tools: held-out episodes call them too
    sample = lambda rows: generate(model.policy, tokenizer, rows, cfg.ppo, device, tools=tools)  # noqa: E731
    if engine is not None:
        engine.sync_weights(model)
        sample = lambda rows: engine.generate(rows, seed=cfg.seed)  # noqa: E731
    nll = ReferenceNLL(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        result = sample_and_score(nll.wrap(sample), eval_ds, reward_fn, device, batch_size=batch_size,
                                  trainer_state=trainer_state, gold_fn=gold_fn)
    return {**result, **nll.result()}


class ReferenceNLL:
    """The reference model's negative log-likelihood per token of the held-out completions: how far their text
    has moved from what the model wrote before training (in nats a token, at temperature 1). Word salad reads
    several nats above the start while the distinct-word share cannot tell it from varied wording; varied
    praise stays near it. Computed when the reference is this policy with its LoRA adapters off (peft); with
    a full fine-tune the reference is not at hand here and the figure is left out. Only the tokens the policy
    wrote count (tool results do not). `wrap(sample)` scores each batch `sample` returns."""

    def __init__(self, model):
        self.model = model if hasattr(getattr(model, "policy", None), "disable_adapter") else None
        self.total, self.tokens = 0.0, 0

    def wrap(self, sample):
        if self.model is None:
            return sample

        def scored(rows):
            rollout = sample(rows)
            self.add(rollout)
            return rollout
        return scored

    def add(self, rollout) -> None:
        import torch

        from rlhf_app.rl.rollout import ref_logprobs

        mask = rollout.policy_mask()
        with torch.no_grad(), self.model.reference(None) as ref:
            logprobs = ref_logprobs(ref, rollout.query, rollout.query_mask, rollout.response, rollout.mask, 1.0)
        self.total -= float((logprobs.float() * mask).sum())
        self.tokens += int(mask.sum())

    def result(self) -> dict:
        return {"ref_nll": self.total / self.tokens} if self.model is not None and self.tokens else {}


def eval_metrics(result: dict) -> dict[str, float]:
    """An evaluation result as flat `eval/...` metrics: mean score, extra metrics, rewards/<name>/mean,
    the distinct-word share of the completions (a policy drifting into one phrase drives it down) and the
    reference's NLL of them a token (`ReferenceNLL`: a policy drifting into word salad drives it up)."""
    from rlhf_app.text_stats import distinct_word_share

    share = distinct_word_share([s["completion"] for s in result["samples"]])
    nll = {"eval/ref_nll": result["ref_nll"]} if "ref_nll" in result else {}
    gold = {"eval/proxy": result["mean_score"], "eval/gold": result["gold_score"],
            **{f"eval/gold/{k}": v for k, v in result.get("gold_extra", {}).items()}} if "gold_score" in result else {}
    return {"eval/mean_score": result["mean_score"], **{f"eval/{k}": v for k, v in result["extra"].items()},
            **({"eval/distinct_word_share": share} if share is not None else {}), **nll, **gold}


class GoldWatch:
    """Proxy against gold over a run's evaluations, on the main process: gold.json (every evaluation, the best,
    the warning), gold-best/ (the policy of the best gold evaluation, written whole: `rlhf-app eval
    checkpoint=gold-best`), and one warning when gold fell `patience` evaluations in a row (each below the one
    before) while the proxy rose over them: the proxy is being over-optimised (Gao et al. 2022). A resumed run
    keeps gold.json's evaluations before the update it resumes at."""

    def __init__(self, cfg, tokenizer):
        self.out, self.patience, self.tokenizer = Path(cfg.output_dir), cfg.reward.gold_patience, tokenizer
        saved = json.loads((self.out / "gold.json").read_text()) if (self.out / "gold.json").is_file() else {}
        self.history, self.best = saved.get("evaluations", []), saved.get("best")
        self.warned_at = saved.get("warned_at")

    def update(self, step: int, proxy: float, gold: float, model, gold_extra: dict | None = None) -> None:
        """Record one evaluation (`gold_extra`: the gold's extra metrics, kept beside it); keep its policy in
        gold-best/ when gold is the best so far; warn once on a sustained fall."""
        from tqdm.auto import tqdm  # the line above the loop's progress bar

        from rlhf_app.models.policy import save_policy
        from rlhf_app.run_dir.atomic import building, write_json

        self.history = [e for e in self.history if e["step"] < step]  # a resume redoes the later updates
        if self.best is not None and self.best["step"] >= step:
            self.best = None
        if self.warned_at is not None and self.warned_at >= step:
            self.warned_at = None
        entry = {"step": step, "proxy": proxy, "gold": gold}
        self.history.append({**entry, "gold_extra": gold_extra} if gold_extra else entry)
        if self.best is None or gold > self.best["gold"]:
            with building(self.out / "gold-best") as tmp:
                save_policy(model, self.tokenizer, tmp)
                (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
            self.best = {**self.history[-1], "checkpoint": "gold-best"}
        falls, seq = 0, self.history
        while falls + 1 < len(seq) and seq[-1 - falls]["gold"] < seq[-2 - falls]["gold"]:
            falls += 1
        start = seq[-1 - falls]
        if self.warned_at is None and falls >= self.patience and proxy > start["proxy"]:
            self.warned_at = step
            tqdm.write(f"warning: the gold reward fell {falls} evaluations in a row ({start['gold']:.4g} at update "
                       f"{start['step']} -> {gold:.4g} at update {step}) while the proxy rose ({start['proxy']:.4g} "
                       f"-> {proxy:.4g}): the policy is over-optimising the proxy reward. Gold peaked at update "
                       f"{self.best['step']} ({self.best['gold']:.4g}), kept in {self.out / 'gold-best'} (rlhf-app "
                       f"eval run_dir={self.out} checkpoint=gold-best)")
        write_json(self.out / "gold.json", {"best": self.best, "warned_at": self.warned_at,
                                            "patience": self.patience, "evaluations": self.history})


class EvalEvery:
    """The trainer's `on_update` hook for `eval_steps`: {} on other updates and other processes."""

    def __init__(self, cfg, accelerator, tokenizer, eval_ds, reward_fn, engine=None, gold_fn=None):
        self.cfg, self.accelerator, self.tokenizer = cfg, accelerator, tokenizer
        self.eval_ds, self.reward_fn, self.engine, self.gold_fn = eval_ds, reward_fn, engine, gold_fn
        self.gold = GoldWatch(cfg, tokenizer) if gold_fn is not None and accelerator.is_main_process else None

    def __call__(self, step: int, total_updates: int, model) -> dict:
        every = self.cfg.eval_steps
        if not every or (step % every and step != total_updates) or not self.accelerator.is_main_process:
            return {}
        from transformers import TrainerState

        unwrapped = self.accelerator.unwrap_model(model)
        result = evaluate_policy(self.cfg, unwrapped, self.tokenizer, self.eval_ds, self.reward_fn,
                                 self.accelerator.device, TrainerState(global_step=step, max_steps=total_updates),
                                 self.engine, self.gold_fn)
        if self.gold is not None:
            self.gold.update(step, result["mean_score"], result["gold_score"], unwrapped, result.get("gold_extra"))
        return eval_metrics(result)


def eval_line(when: str, result: dict) -> str:
    """'before training: mean score 0.031 on 16 held-out prompts, accuracy 0.250'."""
    extra = "".join(f", {k} {v:.3f}" for k, v in result["extra"].items())
    if "gold_score" in result:
        extra += f", gold {result['gold_score']:.3f}" + "".join(f", gold {k} {v:.3f}"
                                                                for k, v in result.get("gold_extra", {}).items())
    if "ref_nll" in result:
        extra += f", reference NLL {result['ref_nll']:.2f} a token"
    return f"{when} training: mean score {result['mean_score']:.3f} on {len(result['samples'])} held-out prompts{extra}"


def values_along(model, tokenizer, samples: list[dict], device) -> dict:
    """The critic's value before each token of the highest- and lowest-scoring completions:
    {"high"|"low": {"prompt", "score", "tokens": [T], "values": [T]}}, T the completion's tokens."""
    import torch

    out = {}
    ranked = sorted(samples, key=lambda s: s["score"])
    for name, sample in (("high", ranked[-1]), ("low", ranked[0])):
        ids = tokenizer(sample["prompt"] + sample["completion"], return_tensors="pt",
                        add_special_tokens=False)["input_ids"].to(device)
        n_prompt = len(tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            _, values = model(ids, torch.ones_like(ids))
        out[name] = {"prompt": sample["prompt"], "score": sample["score"],
                     "tokens": tokenizer.convert_ids_to_tokens(ids[0, n_prompt:].tolist()),
                     "values": values[0, n_prompt - 1:-1].float().tolist()}
    return out


def gsm8k_metric_scores(completions: list[str], answers: list, method: str = "strict",
                        multiple_answers: str = "last", answer_at_end: bool = False) -> dict:
    """GSM8K figures through the project's `evaluate` metric module, under the keys training's
    eval.json uses (the module grades with the reward's own `accuracy_metrics`)."""
    from rlhf_app.rewards.gsm8k import load_gsm8k_metric

    return load_gsm8k_metric().compute(predictions=completions, references=list(answers), method=method,
                                       multiple_answers=multiple_answers, answer_at_end=answer_at_end)


# Figures a data preset adds to a saved policy's evaluation, beside the reward's own extra metrics:
# data.name -> fn(cfg, completions, dataset) -> {metric: value}.
DATASET_METRICS = {
    "gsm8k": lambda cfg, completions, dataset: gsm8k_metric_scores(
        completions, dataset["answer"], cfg.reward.method, cfg.reward.multiple_answers, cfg.reward.answer_at_end),
}


def evaluate_run(cfg, run_dir: Path, checkpoint: str = "final", split: str = "eval", num: int | None = None) -> dict:
    """Score `run_dir/<checkpoint>` on `num` prompts (None: data.num_eval) of the recipe's `split` (eval |
    train) with the trainer's own loading, generation and reward: the eval.json entry plus
    {"checkpoint", "split"}. `checkpoint=final` reproduces eval.json's "after" numbers."""
    import torch
    from accelerate import PartialState

    from rlhf_app import rewards
    from rlhf_app.data import prompts as data
    from rlhf_app.models import policy as models

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = PartialState().device
    with hub_access("the policy's base model", cfg.model.name_or_path, cfg):
        model, tokenizer = models.load_policy(run_dir / checkpoint, dtype=cfg.model.dtype)
    model.to(device).eval()
    hub_data = cfg.data.name if cfg.data.source == "hub" else None
    with hub_access("the dataset", hub_data, cfg):
        train_ds, eval_ds = data.load_prompts(cfg, tokenizer)
    dataset = eval_ds if split == "eval" else train_ds
    dataset = dataset.select(range(min(num or cfg.data.num_eval, len(dataset))))
    from rlhf_app.engines.tool_specs import resolve_tools, reward_sources

    sources = rewards.resolve_sources(cfg) + reward_sources(resolve_tools(cfg.rollout))  # an environment's get_reward
    with hub_access("the reward model", cfg.reward.model, cfg):
        reward_fn = rewards.build_reward(cfg, device, sources)
    result = evaluate_policy(cfg, model, tokenizer, dataset, reward_fn, device)
    if cfg.data.name in DATASET_METRICS:
        completions = [s["completion"] for s in result["samples"]]
        result["extra"].update(DATASET_METRICS[cfg.data.name](cfg, completions, dataset))
    return {"checkpoint": checkpoint, "split": split, **result}

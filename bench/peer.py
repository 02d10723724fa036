"""The peer side: TRL 1.12's `trl.experimental.ppo.PPOTrainer`, run from `.venv-peer`.

    .venv-peer/bin/python bench/peer.py SPEC.json RESULT.json

The trainer runs as it ships (its two gc.collect() per update included). Its phases are timed by
wrapping the module-level functions its loop calls — `batch_generation` (generation),
`get_reward` on the reward model (reward) and on the value model plus `forward` on the reference
(reference/value forward), `gc.collect` (gc) — and callbacks mark the end of each update.
"""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import common

spec = common.setup_process()

import torch  # noqa: E402 - after the offline switches and thread count
import trl.experimental.ppo.ppo_trainer as ppo_module  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback, set_seed  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

EVENTS: list[tuple[str, float, float]] = []  # (phase, start, end), perf_counter seconds
MARKS: dict[str, list[float]] = {"begin": [], "log": [], "step_end": []}
LOGS: list[dict] = []
TOKENS: list[tuple[int, int]] = []  # (real prompt + response tokens, padded tokens) of each rollout
ROLES: dict[int, str] = {}  # id(model) -> "reward" | "ref"; any other model is the value model
CPU_MARKS: list[float] = []  # process CPU seconds at the start of each rollout, then at the end


def timed(phase_of, fn):
    """Wrap `fn` so each call is recorded under the phase `phase_of(*args)` returns (None: not recorded)."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        phase = phase_of(*args)
        if phase:
            EVENTS.append((phase, t0, time.perf_counter()))
        return out

    return wrapper


def _generation_phase(model, queries, _fwd_bs, pad_token_id, _cfg):
    n, width = queries.shape[0], queries.shape[1] + spec["response_length"]
    TOKENS.append((int((queries != pad_token_id).sum()) + n * spec["response_length"], n * width))
    return "generate"


def rollout_start(fn):
    """Note the process CPU time as each rollout starts (CPU seconds per update)."""

    def wrapper(*args, **kwargs):
        CPU_MARKS.append(time.process_time())
        return fn(*args, **kwargs)

    return wrapper


ppo_module.batch_generation = rollout_start(timed(_generation_phase, ppo_module.batch_generation))
ppo_module.get_reward = timed(lambda model, *a: "reward" if ROLES.get(id(model)) == "reward" else "forward",
                              ppo_module.get_reward)
ppo_module.forward = timed(lambda model, *a: "forward" if ROLES.get(id(model)) == "ref" else None,
                           ppo_module.forward)
ppo_module.gc = types.SimpleNamespace(collect=timed(lambda *a: "gc", ppo_module.gc.collect))


class Marks(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        MARKS["begin"].append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        MARKS["log"].append(time.perf_counter())
        LOGS.append(dict(logs or {}))

    def on_step_end(self, args, state, control, **kwargs):
        MARKS["step_end"].append(time.perf_counter())


def per_update() -> list[dict]:
    """Per-update seconds from the event log. Update i spans (end of update i-1, end of update i];
    its training phase runs from the end of its last rollout call to its metrics log, minus gc."""
    rows, start = [], MARKS["begin"][0]
    for end, logged in zip(MARKS["step_end"], MARKS["log"]):
        inside = [e for e in EVENTS if start < e[2] <= end]
        spent = {p: sum(e[2] - e[1] for e in inside if e[0] == p) for p in ("generate", "reward", "forward", "gc")}
        rollout_end = max((e[2] for e in inside if e[0] != "gc"), default=start)
        gc_in_train = sum(e[2] - e[1] for e in inside if e[0] == "gc" and e[1] >= rollout_end and e[2] <= logged)
        rows.append({"update_s": end - start, "generate_s": spent["generate"], "reward_s": spent["reward"],
                     "forward_s": spent["forward"], "train_s": logged - rollout_end - gc_in_train,
                     "gc_s": spent["gc"]})
        start = end
    return rows


def main() -> None:
    path = spec["policy_path"]
    # PPOTrainer seeds torch but never numpy, whose global RNG shuffles its mini-batches: seed all
    # here (as rlhf_app does) so that a repeated run gives the same rewards.
    set_seed(spec["seed"])
    tokenizer = common.bench_tokenizer(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    reward = common.seq_classifier(path, common.REWARD_SEED, tokenizer.pad_token_id)
    value = common.seq_classifier(path, common.VALUE_SEED, tokenizer.pad_token_id)
    rows = json.loads(Path(spec["prompts_path"]).read_text())
    train = Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows])
    b = spec["batch"]
    args = PPOConfig(
        output_dir=spec["out_dir"], seed=spec["seed"], report_to=[], save_strategy="no", logging_steps=1,
        disable_tqdm=True, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        # One optimizer step per mini-batch of b / M episodes, as in rlhf_app: TRL's local batch is
        # per_device_train_batch_size × gradient_accumulation_steps, split into M mini-batches.
        per_device_train_batch_size=b, gradient_accumulation_steps=1, num_mini_batches=spec["mini_batches"],
        num_ppo_epochs=spec["epochs"], response_length=spec["response_length"],
        total_episodes=b * spec["updates"], learning_rate=spec["lr"], lr_scheduler_type="constant",
        kl_coef=spec["kl_coef"], vf_coef=spec["vf_coef"], temperature=spec["temperature"],
        stop_token=None, missing_eos_penalty=None, num_sample_generations=0,
        local_rollout_forward_batch_size=64, per_device_eval_batch_size=b)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward, train_dataset=train, value_model=value,
                         eval_dataset=train.select(range(b)), callbacks=[Marks()])
    ROLES.update({id(trainer.reward_model): "reward", id(trainer.ref_model): "ref"})
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    CPU_MARKS.append(time.process_time())
    updates = per_update()
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    eval_rows = json.loads(Path(spec["eval_prompts_path"]).read_text())
    scorer = common.RewardModelScore(trainer.reward_model, tokenizer)
    eval_after = common.eval_reward(policy, tokenizer, scorer, eval_rows, spec)
    cpu = [b - a for a, b in zip(CPU_MARKS, CPU_MARKS[1:])]
    for row, logs, tokens, cpu_s in zip(updates, LOGS, TOKENS, cpu):
        row.update(score=logs["objective/scores"], kl=logs["objective/kl"], tokens=tokens[0], cpu_s=cpu_s,
                   trained_tokens=tokens[1] * spec["epochs"])
    common.finish({"engine": "peer", "updates": updates, "trained_params": trained, "eval_after": eval_after,
                   "reward_checksum": common.head_checksum(trainer.reward_model)})


if __name__ == "__main__":
    main()

"""The rlhf_app side: the engine's PPO loop (`rlhf_app.rl.loop.train`), run from `.venv`.

    .venv/bin/python bench/ours.py SPEC.json RESULT.json

Set up as `rlhf_app.run.run` does (config from the `tiny` recipe plus overrides, `build_models`,
an Accelerator), minus the before/after evaluation and the final save, which are not PPO updates.
Phase times come from the run's own metrics.jsonl (`time/*_s`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import common

spec = common.setup_process()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rlhf_app import footprint  # noqa: E402

ENGINE = spec.get("engine", "hf")  # rollout.engine: hf, or vllm (the `vllm` variant of run.py)
footprint.keep_out_triton(ENGINE)  # as `rlhf-app train` does on a machine without CUDA (rlhf_app/footprint.py)

import torch  # noqa: E402 - after the offline switches and thread count
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from datasets import Dataset  # noqa: E402

from rlhf_app import preflight, rewards
from rlhf_app.models import policy as models  # noqa: E402
from rlhf_app.config import load_config  # noqa: E402
from rlhf_app.engines import build_engine  # noqa: E402
from rlhf_app.rl import loop as trainer  # noqa: E402

TRAINED_TOKENS: list[tuple] = []  # (padded prompt + response, response) tokens of each rollout
CPU_MARKS: list[float] = []  # process CPU seconds at the start of each rollout, then at the end


def overrides(spec: dict) -> list[str]:
    """The spec as rlhf_app config overrides: the peer's batch arithmetic and its defaults where
    ours differ (no gradient clipping, never stop early at EOS)."""
    b, m = spec["batch"], spec["mini_batches"]
    return ["recipe=tiny", f"model.name_or_path={spec['policy_path']}", f"output_dir={spec['out_dir']}",
            f"seed={spec['seed']}", "num_threads=1", "sample_every=0", "eval_before_after=false",
            f"ppo.per_device_train_batch_size={b // m}", "ppo.gradient_accumulation_steps=1",
            f"ppo.num_mini_batches={m}", f"ppo.num_ppo_epochs={spec['epochs']}",
            f"ppo.response_length={spec['response_length']}", f"ppo.total_episodes={b * spec['updates']}",
            f"ppo.learning_rate={spec['lr']}", "ppo.lr_scheduler_type=constant", f"ppo.kl_coef={spec['kl_coef']}",
            f"ppo.vf_coef={spec['vf_coef']}", f"ppo.temperature={spec['temperature']}", "ppo.max_grad_norm=0",
            "ppo.stop_token=null", "ppo.local_rollout_forward_batch_size=64",
            f"rollout.engine={spec.get('engine', 'hf')}",
            *(["ppo.bf16=true"] if spec.get("precision") == "bf16" else []),
            *([f"ppo.max_tokens_per_micro_batch={spec['max_tokens']}"] if spec.get("max_tokens") else [])]


def count_trained_tokens(generate):
    """Wrap an engine's `generate` to note each rollout's padded width (the update phase's tokens)."""

    def wrapper(rows, **kwargs):
        CPU_MARKS.append(time.process_time())
        rollout = generate(rows, **kwargs)
        b, p, r = rollout.query.shape[0], rollout.query.shape[1], rollout.response.shape[1]
        TRAINED_TOKENS.append((b * (p + r), b * r))
        return rollout

    return wrapper


def main() -> None:
    cfg = load_config(overrides(spec))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    accelerator = Accelerator(mixed_precision=preflight.mixed_precision(cfg.ppo, torch.cuda.is_available()))
    set_seed(cfg.seed)
    tokenizer = common.bench_tokenizer(spec["policy_path"])
    model, ref_policy = models.build_models(cfg)
    rows = json.loads(Path(spec["prompts_path"]).read_text())
    train = Dataset.from_list(rows)
    rm = common.seq_classifier(spec["policy_path"], common.REWARD_SEED, tokenizer.pad_token_id)
    reward_fn = rewards.checked("reward_model", common.RewardModelScore(rm, tokenizer))
    set_seed(cfg.seed)
    engine = build_engine(cfg, accelerator, model, tokenizer)
    engine.generate = count_trained_tokens(engine.generate)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # The FLOPs the update really does: the LM head runs on response positions only, embeddings do no matmul.
    embed, head = model.policy.get_input_embeddings().weight, model.policy.get_output_embeddings().weight
    matmul_params = trained - embed.numel() - (0 if head is embed else head.numel())
    state = trainer.train(cfg, accelerator, model, ref_policy, tokenizer, train, reward_fn, out, engine)
    CPU_MARKS.append(time.process_time())
    policy = accelerator.unwrap_model(state["model"]).policy
    eval_rows = json.loads(Path(spec["eval_prompts_path"]).read_text())
    eval_after = common.eval_reward(policy, tokenizer, reward_fn, eval_rows, spec)
    updates = []
    cpu = [b - a for a, b in zip(CPU_MARKS, CPU_MARKS[1:])]
    for line, tokens, cpu_s in zip((out / "metrics.jsonl").read_text().splitlines(), TRAINED_TOKENS, cpu):
        m = json.loads(line)
        updates.append({"update_s": m["time/update_s"], "generate_s": m["time/generate_s"],
                        "reward_s": m["time/reward_s"], "forward_s": m["time/forward_s"],
                        "train_s": m["time/train_s"], "gc_s": 0.0, "cpu_s": cpu_s, "score": m["objective/scores"],
                        "kl": m["objective/kl"], "tokens": round(m["perf/tokens_per_s"] * m["time/update_s"]),
                        "trained_tokens": tokens[0] * spec["epochs"],
                        "train_flops": 6 * spec["epochs"] * (matmul_params * tokens[0] + head.numel() * tokens[1])})
    common.finish({"engine": "ours", "updates": updates, "trained_params": trained, "eval_after": eval_after,
                   "reward_checksum": common.head_checksum(rm)},
                  dtype="bfloat16" if spec.get("precision") == "bf16" else "float32")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

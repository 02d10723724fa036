"""`rlhf-app rm`: a reward model on TRL's RewardTrainer (Bradley–Terry over chosen / rejected pairs).

common.run_stage: config → tokenizer → pairs and their checks (before any model loads) → claim the run folder →
RewardTrainer (LoRA with the score head trainable) → train, resumable → held-out pairs scored (rm_eval.json:
pairwise accuracy, the margins) → report → final/: a sequence-classification folder that `reward.funcs`
takes. RewardTrainer appends EOS to every text pair and renders conversations through the chat template;
final/config.json records which (`reward_append_eos`, `reward_conversational`), and the reward path does the
same, so PPO scores exactly as the model was trained.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_app.config import TrainConfig
from rlhf_app.stages import common

APPEND_EOS = "reward_append_eos"  # in final/config.json: score text + EOS (rewards/sentiment.py reads it)
CONVERSATIONAL = "reward_conversational"  # in final/config.json: score [prompt..., completion] via the chat template


def score_pairs(model, dataset, pad_token_id: int, batch_size: int) -> list[float]:
    """score(chosen) - score(rejected) of each tokenized pair (chosen_ids / rejected_ids), in order."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    margins = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate([{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]} for r in rows])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float().squeeze(-1)
            chosen, rejected = logits.chunk(2)
            margins += (chosen - rejected).tolist()
    model.train(was_training)
    return margins


def summary(margins: list[float]) -> dict:
    """rm_eval.json: pairwise accuracy (ties count half) and the margins of the held-out pairs."""
    n = len(margins)
    wins = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    return {"pairs": n, "accuracy": wins / n if n else None, "mean_margin": sum(margins) / n if n else None,
            "margins": margins}


def run(cfg: TrainConfig, callbacks=()) -> Path:
    """Train as `cfg.rm` says; returns the final/ folder. `callbacks`: more TrainerCallbacks (tests)."""
    from trl import RewardConfig, RewardTrainer

    from rlhf_app.run_dir.atomic import write_json

    s, out = cfg.rm, Path(cfg.output_dir)

    def make_trainer(path, tokenizer, train_ds, eval_ds, callbacks):
        args = common.trainer_args(cfg, "rm", RewardConfig, center_rewards_coefficient=s.center_rewards_coefficient,
                                   disable_dropout=s.disable_dropout)
        return RewardTrainer(model=path, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer,
                             peft_config=common.lora(cfg, "SEQ_CLS", modules_to_save=["score"]), callbacks=callbacks)

    def held_out(trainer, main):  # the held-out pairs scored: rm_eval.json, for the report
        if main:
            result = summary(score_pairs(trainer.model, trainer.eval_dataset, trainer.processing_class.pad_token_id,
                                         s.per_device_eval_batch_size))
            write_json(out / "rm_eval.json", result)
            print(f"held-out pairs: {result['pairs']}, pairwise accuracy {result['accuracy']:.3f}, "
                  f"mean margin {result['mean_margin']:.3f}")

    def mark(model, conversational):  # how RewardTrainer tokenized the pairs: the reward path does the same
        setattr(model.config, APPEND_EOS, not conversational)
        setattr(model.config, CONVERSATIONAL, conversational)

    return common.run_stage(cfg, "rm", make_trainer, held_out, mark, callbacks=callbacks)

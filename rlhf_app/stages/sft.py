"""`rlhf-app sft`: supervised fine-tuning on TRL's SFTTrainer, under the run-folder rules of every run.

common.run_stage: config → tokenizer → data and its checks (one line each, before any model loads) → claim
the run folder (config.yaml) → SFTTrainer (LoRA when peft.enabled) → train, resumable → held-out loss →
report → final/: a causal-LM folder that PPO's model.name_or_path loads.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_app.config import TrainConfig
from rlhf_app.stages import common


def run(cfg: TrainConfig, callbacks=()) -> Path:
    """Train as `cfg.sft` says; returns the final/ folder. `callbacks`: more TrainerCallbacks (tests)."""
    from trl import SFTConfig, SFTTrainer

    s = cfg.sft

    def make_trainer(path, tokenizer, train_ds, eval_ds, callbacks):
        args = common.trainer_args(cfg, "sft", SFTConfig, dataset_text_field=s.dataset_text_field,
                                   completion_only_loss=s.completion_only_loss,
                                   assistant_only_loss=s.assistant_only_loss, packing=s.packing,
                                   train_sampling_strategy=s.train_sampling_strategy)
        return SFTTrainer(model=path, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=common.lora(cfg, "CAUSAL_LM"), callbacks=callbacks)

    def held_out(trainer, main):
        trainer.evaluate()  # eval_loss of the held-out rows (every process), logged into metrics.jsonl

    return common.run_stage(cfg, "sft", make_trainer, held_out, callbacks=callbacks)

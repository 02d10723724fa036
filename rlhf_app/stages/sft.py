"""`rlhf-app sft`: supervised fine-tuning on TRL's SFTTrainer, under the run-folder rules of every run.

config → network env → tokenizer → data and its checks (one line each, before any model loads) → claim
the run folder (config.yaml) → SFTTrainer (LoRA when peft.enabled) → train, resumable → held-out loss →
report → final/: a causal-LM folder that PPO's model.name_or_path loads.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_app.config import TrainConfig
from rlhf_app.offline import set_network_env


def run(cfg: TrainConfig, callbacks=()) -> Path:
    """Train as `cfg.sft` says; returns the final/ folder. `callbacks`: more TrainerCallbacks (tests)."""
    set_network_env(cfg.offline)
    import torch
    from trl import SFTConfig, SFTTrainer

    from rlhf_app.run_dir.signals import EndPhase, StopFlag
    from rlhf_app.stages import common, data

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    s, out = cfg.sft, Path(cfg.output_dir)
    # ---- tokenizer and data, checked before any model loads
    path, tokenizer = common.load_tokenizer(cfg)
    train_ds, eval_ds, _ = data.load(cfg, "sft", tokenizer)
    from accelerate import PartialState

    steps = common.total_steps(s, len(train_ds), PartialState().num_processes)
    # ---- the run folder, then the trainer
    with common.claim(cfg, "sft", steps) as resume, StopFlag() as flag:
        args = common.trainer_args(cfg, "sft", SFTConfig, dataset_text_field=s.dataset_text_field,
                                   completion_only_loss=s.completion_only_loss,
                                   assistant_only_loss=s.assistant_only_loss, packing=s.packing)
        stop = common.StopOnSignal(flag)
        trainer = SFTTrainer(model=path, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, peft_config=common.lora(cfg, "CAUSAL_LM"),
                             callbacks=[common.MetricsLog(out / "metrics.jsonl"), stop, *callbacks])
        print(f"sft: {path}, {sum(p.numel() for p in trainer.model.parameters()):,} parameters; "
              f"{len(train_ds)} training rows, {len(eval_ds)} held out; {steps} steps")
        step = common.train(trainer, cfg, resume, stop)
        # ---- after the last step (checkpointed): a signal stops at once, but lets final/ complete
        with EndPhase(out / f"checkpoint-{step}", out / "final", trainer.is_world_process_zero()) as end:
            trainer.evaluate()  # eval_loss of the held-out rows, logged into metrics.jsonl
            if trainer.is_world_process_zero():
                common.report(out)
            with end.finishing():
                model = common.merged(trainer.model)
                if trainer.is_world_process_zero():
                    final = common.save_final(model, tokenizer, out, step)
                    print(f"saved {final}")
    return out / "final"

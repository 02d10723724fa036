"""Run by tests/test_pipeline.py: `rlhf-app pipeline ARGS` that signals itself as stage STAGE begins to save
checkpoint-N, so a kill lands at a known place (the updates since the previous checkpoint done, not saved).

    python tests/pipeline_kill_worker.py KILL|TERM STAGE N key=value ...
"""

import os
import signal
import sys
from pathlib import Path

import transformers

from rlhf_app.cli.main import main
from rlhf_app.run_dir import checkpoint

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


def at(folder, step) -> None:
    if Path(folder).name == STAGE and step == STEP:
        os.kill(os.getpid(), SIGNAL)


def ppo_save(accelerator, output_dir, model, tokenizer, trainer_state, *args, **kwargs):
    at(output_dir, trainer_state["step"])
    return real_ppo_save(accelerator, output_dir, model, tokenizer, trainer_state, *args, **kwargs)


def trainer_save(self, *args, **kwargs):  # the SFT and reward-model stages: TRL's trainers
    at(self.args.output_dir, self.state.global_step)
    return real_trainer_save(self, *args, **kwargs)


if __name__ == "__main__":
    SIGNAL, STAGE, STEP = SIGNALS[sys.argv[1]], sys.argv[2], int(sys.argv[3])
    real_ppo_save, checkpoint.save_checkpoint = checkpoint.save_checkpoint, ppo_save
    real_trainer_save = transformers.Trainer._save_checkpoint
    transformers.Trainer._save_checkpoint = trainer_save
    main(["pipeline", *sys.argv[4:]])

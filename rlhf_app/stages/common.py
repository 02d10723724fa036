"""What the SFT and reward-model stages share around TRL's trainers, whose loops they never rewrite.

- `run_stage`: both stages' run, top to bottom; a stage gives its trainer, its held-out step and what its
  final/config.json records;
- `trainer_args`: our config section as TRL's SFTConfig / RewardConfig (TrainingArguments' names);
- `MetricsLog`: a TrainerCallback appending each logged row, with its `step`, to metrics.jsonl;
- `StopOnSignal`: Ctrl-C / SIGTERM (run_dir.signals.StopFlag) -> save a checkpoint at the step boundary
  and stop; `train` then exits 130 / 143 with one line naming resume_from=auto;
- `claim`: the run-folder rules of run_dir/claim.py for the Trainer's checkpoint-N folders (refuse to
  overwrite, the lock, resume checks); `train` resumes through the Trainer's own `resume_from_checkpoint`;
- `save_final`: final/ written whole (run_dir/atomic.py), LoRA adapters merged, marked with its step.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from rlhf_app.config import TrainConfig, to_yaml
from rlhf_app.offline import set_network_env
from rlhf_app.preflight import PreflightError, mixed_precision
from rlhf_app.run_dir.checkpoint import find_resume, remove_leftovers
from rlhf_app.run_dir.claim import SAFE, RunDirError, RunLock, check_output_dir, config_changes, finished_at, holds_run
from rlhf_app.run_dir.outputs import clear_run

TRAINER_STATE = "trainer_state.json"  # the Trainer's checkpoint-N: global_step (its complete mark); final/: step


def trainer_args(cfg: TrainConfig, stage: str, args_cls, **extra):
    """TRL's config object (SFTConfig / RewardConfig) from the stage's section and the run's top-level keys."""
    s = getattr(cfg, stage)
    m = cfg.model
    init = {"dtype": m.dtype, "trust_remote_code": m.trust_remote_code, **m.init_kwargs}
    if m.revision:
        init["revision"] = m.revision
    if m.attn_implementation:
        init["attn_implementation"] = m.attn_implementation
    report = [r for r in cfg.report_to if r != "none"]
    import torch

    cuda = torch.cuda.is_available()
    mixed_precision(s, cuda, name=stage)  # fp16 without a GPU: one line (bf16 runs on CPUs, with use_cpu)
    return args_cls(use_cpu=not cuda,
        output_dir=cfg.output_dir, seed=cfg.seed, run_name=cfg.run_name or Path(cfg.output_dir).name,
        report_to=report or "none", learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs,
        max_steps=s.max_steps, per_device_train_batch_size=s.per_device_train_batch_size,
        per_device_eval_batch_size=s.per_device_eval_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, lr_scheduler_type=s.lr_scheduler_type,
        warmup_steps=s.warmup_steps, weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm,
        logging_steps=s.logging_steps, save_strategy="steps", save_steps=s.save_steps,
        save_total_limit=s.save_total_limit or None, bf16=s.bf16, fp16=s.fp16,
        gradient_checkpointing=m.gradient_checkpointing, eval_strategy="no", max_length=s.max_length,
        model_init_kwargs=init, trust_remote_code=m.trust_remote_code, disable_tqdm=True, **extra)


def lora(cfg: TrainConfig, task_type: str, modules_to_save: list[str] | None = None):
    """peft's LoraConfig from the `peft` section (None when it is off)."""
    if not cfg.peft.enabled:
        return None
    from rlhf_app.models.policy import lora_config

    return lora_config(cfg.peft, task_type, modules_to_save)


def load_tokenizer(cfg: TrainConfig):
    """The tokenizer of model.name_or_path (asset:NAME resolved) with model.chat_template, for the data checks
    before any model loads."""
    from transformers import AutoTokenizer

    from rlhf_app.assets.registry import resolve
    from rlhf_app.failures import hub_access

    with hub_access("the model", cfg.model.name_or_path, cfg):
        path = resolve(cfg.model.name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.model.revision,
                                                  trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from rlhf_app.models.policy import set_chat_template

    return path, set_chat_template(tokenizer, cfg.model.chat_template)


def total_steps(section, num_rows: int, num_processes: int) -> int:
    """Optimizer steps the Trainer will take (its arithmetic), for the resume checks."""
    if section.max_steps > 0:
        return section.max_steps
    batches = math.ceil(num_rows / (section.per_device_train_batch_size * num_processes))
    return math.ceil(section.num_train_epochs * max(batches // section.gradient_accumulation_steps, 1))


# ---- the run folder

def check_start(cfg: TrainConfig, stage: str, steps: int) -> tuple[list[str], Path | None]:
    """May this stage start in cfg.output_dir as asked? (notes, checkpoint to resume from); RunDirError if not."""
    out = Path(cfg.output_dir)
    again = "continue it with resume_from=auto, replace it with overwrite_output_dir=true, or choose another output_dir"
    holds = holds_run(out, TRAINER_STATE)
    if holds and cfg.overwrite_output_dir:
        clear_run(out)
        return [f"note: overwrite_output_dir=true: removed the earlier run in {out}"], None
    if holds and not cfg.resume_from:
        raise RunDirError(f"output_dir={out} holds another run: {again}")
    resume, finished = find_resume(cfg.resume_from, out, TRAINER_STATE), finished_at(out)
    if resume is None:
        if finished is not None:
            raise RunDirError(f"the run in {out} has finished (final/ holds it) and left no checkpoint to continue "
                              "from: choose another output_dir, or overwrite_output_dir=true to replace it")
        return ([f"note: {out} holds a run that saved no checkpoint: starting it again from step 0"] if holds else []), None
    step = json.loads((resume / TRAINER_STATE).read_text()).get("global_step", 0)
    if finished is not None and steps <= max(finished, step):
        raise RunDirError(f"the run in {out} has finished at step {finished} (final/ holds it); nothing to resume: "
                          f"raise {stage}.max_steps or {stage}.num_train_epochs to train further, or choose another "
                          "output_dir")
    old_yaml = out / "config.yaml"
    if not old_yaml.is_file():
        return [f"note: {out} holds no config.yaml: the resumed settings could not be compared"], resume
    # What a stage trains from: the model, the adapters, the seed and its own section; its length may grow.
    safe = SAFE + tuple(f"{stage}.{k}" for k in ("logging_steps", "save_steps", "save_total_limit", "num_eval",
                                                 "per_device_eval_batch_size", "max_steps", "num_train_epochs"))
    refused, _, notes = config_changes(old_yaml, cfg, only=("seed", "model.", "peft.", f"{stage}."), safe_keys=safe)
    if refused:
        raise RunDirError(f"resume_from={cfg.resume_from} with settings that change what is trained "
                          f"({'; '.join(refused[:6])}): restore them, or start a new run in another output_dir")
    return [f"note: resuming with {line}" for line in notes], resume


@contextlib.contextmanager
def claim(cfg: TrainConfig, stage: str, steps: int):
    """`with claim(cfg, stage, steps) as resume:` the checks above and the lock for the whole stage, then
    config.yaml written. The main process decides; every process raises the same one line."""
    from accelerate import PartialState

    state = PartialState()
    out, lock = Path(cfg.output_dir), RunLock(Path(cfg.output_dir))
    message, notes, resume = None, [], None
    if state.is_main_process:
        try:
            check_output_dir(cfg.output_dir)
            lock.acquire()
            remove_leftovers(out)
            notes, resume = check_start(cfg, stage, steps)
            (out / "config.yaml").write_text(to_yaml(cfg))
        except (PreflightError, FileNotFoundError) as err:
            lock.release()
            message = str(err)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message, resume = broadcast_object_list([message, resume])
    if message is not None:
        raise RunDirError(message)
    for note in notes:
        print(note)
    try:
        yield resume
    finally:
        lock.release()


# ---- callbacks and the training call

def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsLog(_callback_base()):
    """Each row the Trainer logs (loss, grad_norm, learning_rate, TRL's metrics), with its `step`, appended
    to metrics.jsonl as one line (a torn last line of a kill is dropped by the readers)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            row = {"step": state.global_step, "epoch": state.epoch,
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


class StopOnSignal(_callback_base()):
    """A signal (every process agreeing, StopFlag.requested) saves a checkpoint at this step and ends training."""

    def __init__(self, flag):
        self.flag, self.accelerator, self.signum = flag, None, None

    def on_step_end(self, args, state, control, **kwargs):
        self.signum = self.flag.requested(self.accelerator) if self.accelerator is not None else self.flag.signum
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


def train(trainer, cfg: TrainConfig, resume: Path | None, stop: StopOnSignal) -> int:
    """trainer.train(), resumed from `resume` (the Trainer restores weights, optimizer, scheduler, RNG and
    data position); metrics.jsonl cut to the resumed step. Returns the last step; `Stopped` on a signal."""
    from rlhf_app.run_dir.logfiles import truncate_rows
    from rlhf_app.run_dir.signals import Stopped

    out = Path(cfg.output_dir)
    start = json.loads((resume / TRAINER_STATE).read_text())["global_step"] if resume else 0
    if trainer.is_world_process_zero():
        truncate_rows(out / "metrics.jsonl", start)
        if resume:
            print(f"resuming from {resume} (step {start})")
    stop.accelerator = trainer.accelerator
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = trainer.state.global_step
    if stop.signum is not None:
        if trainer.is_world_process_zero():
            print(f"stopped at step {step}: saved {out / f'checkpoint-{step}'}; continue with resume_from=auto",
                  flush=True)
        raise Stopped(stop.signum, out / f"checkpoint-{step}")
    return step


def save_final(model, tokenizer, out: Path, step: int) -> Path:
    """final/ whole or not at all: the model (adapters merged), its tokenizer and the step it finished at."""
    from rlhf_app.run_dir.atomic import building

    with building(out / "final") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TRAINER_STATE).write_text(json.dumps({"step": step}))
    return out / "final"


def run_stage(cfg: TrainConfig, stage: str, make_trainer, held_out, mark=None, callbacks=()) -> Path:
    """Both stages, top to bottom: network env → hub check → tokenizer → data and its checks (one line each,
    before any model loads) → claim the run folder (config.yaml) → `make_trainer(path, tokenizer, train_ds,
    eval_ds, callbacks)`, the stage's TRL trainer → train, resumable → `held_out(trainer, main)` → report →
    final/ (adapters merged; `mark(model, conversational)` first sets what its config records) → the Hub push
    when hub.push. `callbacks`: more TrainerCallbacks (tests). Returns the final/ folder."""
    set_network_env(cfg.offline)
    import torch
    from accelerate import PartialState
    from accelerate.utils import is_peft_model, parse_flag_from_env

    from rlhf_app.hub.upload import check_push, push
    from rlhf_app.report.page import write_report
    from rlhf_app.run_dir.signals import EndPhase, StopFlag
    from rlhf_app.stages import data

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # The shared state first, as `accelerate launch` set it (--cpu: ACCELERATE_USE_CPU): else a CPU launch starts
    # every process as its own main process, and all but one find the run folder locked.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    out = Path(cfg.output_dir)
    if cfg.hub.push:
        check_push(cfg)  # no repo id, offline, no token: said now, not after training
    # ---- tokenizer and data, checked before any model loads
    path, tokenizer = load_tokenizer(cfg)
    train_ds, eval_ds, conversational = data.load(cfg, stage, tokenizer)
    steps = total_steps(getattr(cfg, stage), len(train_ds), state.num_processes)
    # ---- the run folder, then the trainer
    with claim(cfg, stage, steps) as resume, StopFlag() as flag:
        stop = StopOnSignal(flag)
        trainer = make_trainer(path, tokenizer, train_ds, eval_ds,
                               [MetricsLog(out / "metrics.jsonl"), stop, *callbacks])
        print(f"{stage}: {path}, {sum(p.numel() for p in trainer.model.parameters()):,} parameters; {len(train_ds)} "
              f"training {'pairs' if stage == 'rm' else 'rows'}, {len(eval_ds)} held out; {steps} steps")
        step = train(trainer, cfg, resume, stop)
        # ---- after the last step (checkpointed): a signal stops at once, but lets final/ complete
        main = trainer.is_world_process_zero()
        with EndPhase(out / f"checkpoint-{step}", out / "final", main) as end:
            held_out(trainer, main)
            if main:
                print(f"report: {write_report(out)}")
            with end.finishing():
                model = trainer.model.merge_and_unload() if is_peft_model(trainer.model) else trainer.model
                if mark is not None:
                    mark(model, conversational)
                if main:
                    print(f"saved {save_final(model, tokenizer, out, step)}")
    if cfg.hub.push and state.is_main_process:
        push(out, cfg)
    return out / "final"

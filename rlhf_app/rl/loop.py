"""The PPO loop: roll out, score, compute advantages, update; log and checkpoint. Reads top to bottom.

Prefixes follow cleanrl: `b_` for the whole rollout batch, `mb_` for a micro-batch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import TrainerState, get_scheduler
from trl.trainer.utils import print_prompt_completions_sample

from rlhf_app.run_dir import checkpoint as ckpt
from rlhf_app.rl.estimators import ESTIMATORS, settings_from
from rlhf_app.rl.core import KLController, adjust_scores, kl_penalty, masked_whiten, token_rewards
from rlhf_app.run_dir.logfiles import truncate_rows
from rlhf_app.rl.losses import micro_batch_loss
from rlhf_app.rl.metrics import NonFiniteError, objective_metrics, reduced_metrics, reward_metrics, timings
from rlhf_app.run_dir.signals import StopFlag, Stopped
from rlhf_app.engines.hf import build_engine, sampling_correction
from rlhf_app.rl.micro import accumulating, backward, loss_normaliser, micro_batches, pad_to, trim_padding
from rlhf_app.rl.rollout import PromptSampler, RewardLog, logprobs_values, ref_logprobs, score

SAMPLE_COLUMNS = ("step", "prompt", "completion", "score")


def num_updates(ppo, world_size: int) -> int:
    return math.ceil(ppo.total_episodes / (ppo.local_batch_size * world_size))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _no_callback(step: int, total_updates: int, model) -> dict:
    return {}


def train(cfg, accelerator, model, ref_policy, tokenizer, train_ds, reward_fn, output_dir: Path,
          engine=None, on_save=None, on_update=_no_callback) -> dict:
    """Train `model` (a PolicyAndValue) with PPO. Returns the trainer state at the end.

    `engine` samples the rollouts (ppo/engines.py; None: the one cfg.rollout.engine names, built here).

    `on_save(path)` runs on the main process after each periodic checkpoint (e.g. a Hub push);
    `on_update(step, total_updates, model) -> dict` after every update (e.g. the periodic held-out
    evaluation), and what it returns joins that update's metrics."""
    ppo, alg, device = cfg.ppo, cfg.algorithm, accelerator.device
    world = accelerator.num_processes
    total_updates = num_updates(ppo, world)
    mini_batch = ppo.local_batch_size // ppo.num_mini_batches

    # ---- optimizer, schedule, sampler, KL controller
    params, optimizer, scheduler = _optimizer(cfg, accelerator, model, total_updates)
    resume = ckpt.find_resume(cfg.resume_from, output_dir)
    if resume is not None:  # weights go in before prepare, which shards them under ZeRO-3 / FSDP
        ckpt.load_weights(resume, model, cfg.model.dtype)
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_policy is not None:
        ref_policy.to(device)
    sampler = PromptSampler(train_ds, ppo.local_batch_size, cfg.seed, accelerator.process_index, world,
                            alg.group_size)
    kl_ctl = KLController(ppo.kl_coef, ppo.adaptive_kl, ppo.kl_target, ppo.kl_horizon)
    state = {"step": 0, "episode": 0}
    # Whitening statistics over the global batch, so N processes match one process exactly.
    all_reduce = (lambda t: accelerator.reduce(t, reduction="sum")) if world > 1 else None
    estimate, adv_settings = ESTIMATORS[alg.advantage_estimator], settings_from(cfg, all_reduce)

    # ---- resume
    if resume is not None:
        saved = ckpt.load_checkpoint(resume, accelerator, optimizer)
        scheduler.load_state_dict(saved["scheduler"])
        kl_ctl.load_state_dict(saved["kl_ctl"])
        sampler.load_state_dict(saved["sampler"])
        ckpt.apply_learning_rate(optimizer, scheduler, ppo.learning_rate)  # a changed rate is used, not ignored
        state = {"step": saved["step"], "episode": saved["episode"]}
        accelerator.print(f"resumed from {resume} at update {state['step']}")
    # Each update syncs the weights first, the resumed ones included; the sampling seeds go on from state["step"].
    engine = engine if engine is not None else build_engine(cfg, accelerator, model, tokenizer)
    engine.start_at(state["step"])
    if accelerator.is_main_process:
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_rows(output_dir / name, state["step"])

    def trainer_state() -> dict:
        return {**state, "scheduler": scheduler.state_dict(),
                "kl_ctl": kl_ctl.state_dict(), "sampler": sampler.state_dict()}

    progress = tqdm(total=total_updates, initial=state["step"], desc="PPO", unit="update",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    with StopFlag() as stop:
        while state["step"] < total_updates:
            t0 = time.perf_counter()
            # ---- 1. rollout: generate algorithm.num_generations responses per prompt
            rows = sampler.next_batch()
            t_sync = engine.sync_weights(model)
            rollout = engine.generate(rows)  # in the engine's own precision (vLLM: rollout.vllm_dtype)
            t_gen = time.perf_counter()
            # ---- 2. score with the external reward (mixed precision: reward and reference under the policy's autocast)
            reward_log = RewardLog()
            with accelerator.autocast():
                scores = score(reward_fn, rollout, device, TrainerState(
                    global_step=state["step"], max_steps=total_updates, epoch=sampler.epoch), reward_log)
            t_reward = time.perf_counter()
            # ---- 3. log-probs and values of the policy as sampled, log-probs of the reference
            b_query, b_qmask, b_resp, b_mask = rollout.query, rollout.query_mask, rollout.response, rollout.mask
            n = b_resp.shape[0]
            fresh = _one_fresh_step(cfg, kl_ctl, rollout)  # then the update's own log-probs are the old ones
            b_logprobs, b_values, b_ref_logprobs = _rollout_forwards(cfg, accelerator, model, ref_policy, rollout,
                                                                     fresh)
            t_fwd = time.perf_counter()
            # ---- 4. rewards per token and advantages
            with torch.no_grad():
                b_scores = adjust_scores(scores, rollout.contains_stop, ppo.missing_eos_penalty,
                                         ppo.reward_scale, ppo.reward_clip)
                b_kl = kl_penalty(b_logprobs, b_ref_logprobs, ppo.kl_estimator) * b_mask
                b_rewards, b_non_score = token_rewards(b_scores, b_kl, b_mask, kl_ctl.value)
                if ppo.whiten_rewards:
                    b_rewards = masked_whiten(b_rewards, b_mask, shift_mean=False, all_reduce=all_reduce)
                b_advantages, b_returns = estimate(b_rewards, b_values, b_mask, adv_settings)
                engine_metrics, is_weights = sampling_correction(rollout, b_logprobs, b_mask, cfg.rollout, accelerator)
                if is_weights is not None:
                    b_advantages = b_advantages * is_weights
            # ---- 5. PPO epochs over shuffled mini-batches, gradient accumulation over micro-batches
            stats, lr = [], scheduler.get_last_lr()[0]  # logged: the rate of this update's first step
            for _ in range(ppo.num_ppo_epochs):
                order = _shuffled_groups(n, alg.group_size, device)
                for mb_start in range(0, n, mini_batch):
                    mb_idx = order[mb_start:mb_start + mini_batch]
                    # Every micro-batch's loss is divided by the mini-batch's real tokens: any split, the same gradient.
                    mb_tokens = loss_normaliser(b_mask[mb_idx])
                    mb_norm = loss_normaliser(b_mask[mb_idx], alg.loss_agg_mode)  # sequences for the seq-mean modes
                    micros = micro_batches(b_qmask[mb_idx].sum(1), b_mask[mb_idx].sum(1),
                                           ppo.per_device_train_batch_size, ppo.max_tokens_per_micro_batch)
                    mb_stats = 0
                    for k, micro in enumerate(micros):
                        mb = mb_idx[micro]
                        mb_mask = b_mask[mb]
                        with accumulating(accelerator, model, last=k == len(micros) - 1):
                            mb_logprobs, mb_values, mb_entropy = (pad_to(x, b_mask.shape[1]) for x in logprobs_values(
                                model, *trim_padding(b_query[mb], b_qmask[mb], b_resp[mb], mb_mask), ppo.temperature,
                                with_entropy=True, entropy_grad=ppo.ent_coef != 0))
                            if fresh:
                                b_logprobs[mb] = mb_logprobs.detach() * mb_mask
                            loss, row = micro_batch_loss(
                                ppo, alg, mb_logprobs, mb_values, mb_entropy, b_logprobs[mb], b_advantages[mb],
                                _rows_of(b_values, mb), _rows_of(b_returns, mb), b_ref_logprobs[mb], mb_mask,
                                mb_tokens, mb_norm)
                            backward(accelerator, loss)
                        mb_stats = mb_stats + torch.stack(list(row.values())).detach()
                    if ppo.max_grad_norm:
                        accelerator.clip_grad_norm_(params, ppo.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    stats.append(mb_stats)
            t_train = time.perf_counter()
            # ---- 6. metrics, KL controller, log, checkpoint
            with torch.no_grad():
                if fresh:  # the KL of the log-probs filled in by the update (none was in the reward)
                    b_kl = kl_penalty(b_logprobs, b_ref_logprobs, ppo.kl_estimator) * b_mask
                objective = objective_metrics(rollout, scores, b_scores, b_kl, b_non_score, b_logprobs, b_mask,
                                              b_values, b_returns)
                metrics = reduced_metrics(accelerator, stats, list(row), objective, state["step"] + 1)
            kl_ctl_before = kl_ctl.value
            kl_ctl.update(metrics["objective/kl"], ppo.local_batch_size * world)
            state["step"] += 1
            state["episode"] += ppo.local_batch_size * world
            tokens = (b_mask.sum() + rollout.query_mask.sum()).item() * world
            metrics.update({"lr": lr, "kl_coef": kl_ctl_before,
                            **timings(ppo.local_batch_size * world, tokens, t0, t_sync, t_gen, t_reward, t_fwd,
                                      t_train), **engine_metrics})
            metrics.update(reward_metrics(accelerator, reward_log))
            metrics.update(on_update(state["step"], total_updates, model))
            _log_update(cfg, accelerator, output_dir, state, metrics, rollout, scores, reward_log)
            progress.update(1)
            progress.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
            # The last update saves too, so a finished run can be continued with a larger total_episodes.
            # A signal (Ctrl-C, SIGTERM) saves here, at the update boundary, and ends the run.
            signum = stop.requested(accelerator)
            stopping = signum is not None and state["step"] < total_updates
            if stopping or (cfg.save_steps and (state["step"] % cfg.save_steps == 0 or state["step"] == total_updates)):
                saved = ckpt.save_checkpoint(accelerator, output_dir, model, tokenizer, trainer_state(),
                                             cfg.save_total_limit, optimizer)
                # The last update's checkpoint is not pushed: the final push follows with the same weights.
                if on_save is not None and accelerator.is_main_process and not stopping and state["step"] < total_updates:
                    on_save(saved)
            if stopping:
                progress.close()
                accelerator.print(f"\ninterrupted: saved {saved}; continue with resume_from=auto")
                raise Stopped(signum, saved)
    progress.close()
    return {**state, "model": model}


def _optimizer(cfg, accelerator, model, total_updates: int):
    """-> (trainable params, AdamW, the learning-rate schedule, one step per optimizer step)."""
    ppo, device = cfg.ppo, accelerator.device
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates each tensor in one pass: ~5x faster than the default per-tensor loop
    # on CPU, where it was 18% of a SmolLM2 update. DeepSpeed and FSDP bring their own optimizer paths.
    fused = device.type in ("cpu", "cuda") and accelerator.distributed_type in (
        DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    optimizer = torch.optim.AdamW(params, lr=ppo.learning_rate, eps=1e-5, weight_decay=ppo.weight_decay,
                                  fused=fused or None)
    # Not prepared by accelerate, which would step it once per process: stepped once per optimizer step.
    scheduler = get_scheduler(ppo.lr_scheduler_type, optimizer, num_warmup_steps=ppo.warmup_steps,
                              num_training_steps=total_updates * ppo.num_ppo_epochs * ppo.num_mini_batches)
    if accelerator.state.deepspeed_plugin is not None:
        # No data loader is prepared, so DeepSpeed cannot infer these "auto" values itself.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = ppo.per_device_train_batch_size
        ds_config["gradient_clipping"] = ppo.max_grad_norm
    return params, optimizer, scheduler


def _rollout_forwards(cfg, accelerator, model, ref_policy, rollout, fresh: bool):
    """No-grad forwards over the rollout in chunks of local_rollout_forward_batch_size.

    -> (b_logprobs (n, R): the policy as sampled, zeros when `fresh` (the update fills them in);
    b_values (n, R) or None without a critic; b_ref_logprobs (n, R)), all zero past each response."""
    ppo = cfg.ppo
    b_query, b_qmask, b_resp, b_mask = rollout.query, rollout.query_mask, rollout.response, rollout.mask
    chunks = list(_chunks(b_resp.shape[0], ppo.local_rollout_forward_batch_size))
    with torch.no_grad():
        parts = [] if fresh else [logprobs_values(model, b_query[s], b_qmask[s], b_resp[s], b_mask[s], ppo.temperature)
                                  for s in chunks]
        b_logprobs = torch.zeros_like(b_mask) if fresh else torch.cat([p[0] for p in parts]) * b_mask
        b_values = torch.cat([p[1] for p in parts]) * b_mask if cfg.algorithm.uses_critic else None
        with accelerator.autocast(), accelerator.unwrap_model(model).reference(ref_policy) as ref:
            b_ref_logprobs = torch.cat([ref_logprobs(ref, b_query[s], b_qmask[s], b_resp[s], b_mask[s], ppo.temperature)
                                        for s in chunks]) * b_mask
    return b_logprobs, b_values, b_ref_logprobs


def _rows_of(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """x[idx] of a per-episode tensor that is None without a critic."""
    return None if x is None else x[idx]


def _one_fresh_step(cfg, kl_ctl, rollout) -> bool:
    """One optimizer step per rollout, sampled by the trainer's own policy, no critic and no KL in the
    reward: the log-probs "as sampled" equal the update's own, detached (TRL's GRPOTrainer with
    num_iterations=1), so their separate forward is skipped."""
    ppo = cfg.ppo
    return (ppo.num_ppo_epochs == 1 and ppo.num_mini_batches == 1 and not cfg.algorithm.uses_critic
            and kl_ctl.value == 0 and not ppo.adaptive_kl and rollout.logprobs is None)


def _shuffled_groups(n: int, group: int, device) -> torch.Tensor:
    """A random order of n episodes that keeps each group of `group` consecutive ones together. -> (n,)"""
    if group == 1:
        return torch.randperm(n, device=device)
    starts = torch.randperm(n // group, device=device) * group
    return (starts[:, None] + torch.arange(group, device=device)).flatten()


def _log_update(cfg, accelerator, output_dir: Path, state: dict, metrics: dict, rollout, scores, reward_log) -> None:
    """One update's metrics to the trackers and metrics.jsonl, and every sample_every updates its sample table."""
    step = state["step"]
    if step % cfg.logging_steps == 0:  # the trackers; metrics.jsonl below keeps every update
        accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        with open(output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "episode": state["episode"], **metrics}) + "\n")
        if cfg.sample_every and step % cfg.sample_every == 0:
            _log_samples(accelerator, output_dir / "samples.jsonl", step, rollout, scores, reward_log.extra,
                         console=cfg.log_completions and cfg.num_completions_to_print, reward=cfg.reward.name)


def _log_samples(accelerator, path: Path, step: int, rollout, scores, extra: dict | None = None,
                 limit: int = 8, console: int = 0, reward: str = "score") -> None:
    """A table of (prompt, completion, score, what the reward logged per completion, e.g. each
    function's score) into samples.jsonl, every tracker that shows tables and, with `console` > 0,
    its first `console` rows printed as a rich table (TRL's log_completions)."""
    extra = {k: v for k, v in (extra or {}).items() if len(v) == len(rollout.completions)}
    columns = list(SAMPLE_COLUMNS) + list(extra)
    rows = [[step, p, c, s, *(v[i] for v in extra.values())]
            for i, (p, c, s) in enumerate(zip(rollout.prompts, rollout.completions, scores.tolist()))][:limit]
    if console:
        shown = rows[:console]  # the first rows, not a random pick: printing never touches the RNG
        # One column per reward function, as TRL prints them; the total when none was logged.
        per_function = {k.removeprefix("rewards/"): v[:len(shown)] for k, v in extra.items()
                        if k.startswith("rewards/")} or {reward: [r[3] for r in shown]}
        with tqdm.external_write_mode():  # lift the progress bar while the table prints
            print_prompt_completions_sample([r[1] for r in shown], [r[2] for r in shown], per_function, None, step)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(dict(zip(columns, row))) + "\n")
    for tracker in accelerator.trackers:
        if tracker.name in ("wandb", "trackio") and hasattr(tracker, "log_table"):
            tracker.log_table("samples", columns=columns, data=rows, step=step)
        elif tracker.name == "tensorboard":
            lines = ["| prompt | completion | score |", "|---|---|---|"]
            lines += [f"| {p!r} | {c!r} | {s:.3f} |" for _, p, c, s, *_ in rows]
            tracker.writer.add_text("samples", "\n".join(lines), step)

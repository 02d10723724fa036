"""The PPO loop: roll out, score, compute advantages, update; log and checkpoint. Reads top to bottom.

Prefixes follow cleanrl: `b_` for the whole rollout batch, `mb_` for a micro-batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import TrainerState, get_scheduler

from rlhf_app.config.train_config import num_updates
from rlhf_app.rl.core import KLController, adjust_scores, kl_penalty, masked_whiten, token_rewards
from rlhf_app.rl.estimators import ESTIMATORS, settings_from
from rlhf_app.rl.logs import log_update
from rlhf_app.rl.metrics import (NonFiniteError, objective_metrics, reduced_metrics, reward_metrics, timings,
                                 tool_metrics)
from rlhf_app.rl.rollout import RewardLog, logprobs_values, ref_logprobs, score
from rlhf_app.rl.sampler import PromptSampler
from rlhf_app.rl.update import Optimization, UpdateBatch, ppo_update
from rlhf_app.run_dir import checkpoint as ckpt
from rlhf_app.run_dir.logfiles import truncate_rows
from rlhf_app.run_dir.signals import StopFlag, Stopped

__all__ = ["NonFiniteError", "RunState", "reuses_update_logprobs", "train"]  # NonFiniteError: for callers


@dataclass
class RunState:
    """Where a run stands: updates done and episodes seen, as a checkpoint stores them."""

    step: int = 0
    episode: int = 0

    def to_checkpoint(self) -> dict:
        return {"step": self.step, "episode": self.episode}

    @classmethod
    def from_checkpoint(cls, saved: dict) -> RunState:
        return cls(step=saved["step"], episode=saved["episode"])


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _no_callback(step: int, total_updates: int, model) -> dict:
    return {}


def train(cfg, accelerator, model, ref_policy, tokenizer, train_ds, reward_fn, output_dir: Path, engine,
          on_save=None, on_update=_no_callback) -> dict:
    """Train `model` (a PolicyAndValue) with PPO. Returns {"step", "episode", "model", "checkpoint"} at
    the end; `checkpoint` (in output_dir) holds the last update, always saved, even with save_steps=0.

    `engine` samples the rollouts (engines.build_engine; any `engines.Engine`).
    `on_save(path)` runs on the main process after each periodic checkpoint (e.g. a Hub push);
    `on_update(step, total_updates, model) -> dict` after every update (e.g. the periodic held-out
    evaluation), and what it returns joins that update's metrics."""
    ppo, alg, device, world = cfg.ppo, cfg.algorithm, accelerator.device, accelerator.num_processes
    total_updates = num_updates(ppo, world)

    # ---- optimizer, schedule, sampler, KL controller
    params, optimizer, scheduler = _optimizer(cfg, accelerator, model, total_updates)
    resume = ckpt.find_resume(cfg.resume_from, output_dir)
    if resume is not None:  # weights go in before prepare, which shards them under ZeRO-3 / FSDP
        ckpt.load_weights(resume, model, cfg.model.dtype)
    model, optimizer = accelerator.prepare(model, optimizer)
    opt = Optimization(params, optimizer, scheduler)
    if ref_policy is not None:
        ref_policy.to(device)
    sampler = PromptSampler(train_ds, ppo.local_batch_size, cfg.seed, accelerator.process_index, world,
                            alg.group_size)
    kl_ctl = KLController(ppo.kl_coef, ppo.adaptive_kl, ppo.kl_target, ppo.kl_horizon)
    state = RunState()
    saved_at = None  # the update of the newest checkpoint in output_dir, when this call knows it
    # Whitening statistics over the global batch, so N processes match one process exactly.
    all_reduce = (lambda t: accelerator.reduce(t, reduction="sum")) if world > 1 else None
    estimator, adv_settings = ESTIMATORS[alg.advantage_estimator], settings_from(cfg, all_reduce)

    # ---- resume
    if resume is not None:
        saved = ckpt.load_checkpoint(resume, accelerator, optimizer)
        scheduler.load_state_dict(saved["scheduler"])
        kl_ctl.load_state_dict(saved["kl_ctl"])
        sampler.load_state_dict(saved["sampler"])
        ckpt.apply_learning_rate(optimizer, scheduler, ppo.learning_rate)  # a changed rate is used, not ignored
        state = RunState.from_checkpoint(saved)
        if resume.resolve() == (output_dir / f"checkpoint-{state.step}").resolve():
            saved_at = state.step
        accelerator.print(f"resumed from {resume} at update {state.step}")
    # Each update syncs the weights first, the resumed ones included; the sampling seeds go on from state.step,
    # and a batch the checkpoint holds in flight (asynchronous rollouts) is trained on first.
    engine.start_at(state.step, ckpt.load_engine_state(resume, accelerator) if resume is not None else None)
    if accelerator.is_main_process:
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_rows(output_dir / name, state.step)

    def trainer_state() -> dict:
        return {**state.to_checkpoint(), "scheduler": scheduler.state_dict(),
                "kl_ctl": kl_ctl.state_dict(), "sampler": sampler.state_dict()}

    progress = tqdm(total=total_updates, initial=state.step, desc="PPO", unit="update",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    with StopFlag() as stop:
        while state.step < total_updates:
            t0 = time.perf_counter()
            # ---- 1. rollout: algorithm.num_generations responses per prompt, in the engine's own precision
            # (vLLM: rollout.vllm_dtype); with rollout.async the next update's batch is sampled meanwhile
            rollout, t_sync = engine.next_rollout(sampler, model, more=state.step + 1 < total_updates)
            t_gen = time.perf_counter()
            # ---- 2. score with the external reward (mixed precision: reward and reference under the policy's autocast)
            reward_log = RewardLog()
            with accelerator.autocast():
                scores = score(reward_fn, rollout, device, TrainerState(
                    global_step=state.step, max_steps=total_updates, epoch=sampler.epoch), reward_log)
            t_reward = time.perf_counter()
            # ---- 3. log-probs and values of the policy as sampled, log-probs of the reference. `b_mask`: every
            # real token (attention, compute); `b_policy`: those the policy wrote, all that is trained and penalised
            b_mask, b_policy = rollout.mask, rollout.policy_mask()
            reuse = reuses_update_logprobs(ppo, estimator, kl_ctl, engine)  # then the update's are the old ones
            b_logprobs, b_values, b_ref_logprobs = _rollout_forwards(cfg, accelerator, model, ref_policy, rollout,
                                                                     reuse, estimator.needs_critic)
            t_fwd = time.perf_counter()
            # ---- 4. rewards per token and advantages
            with torch.no_grad():
                b_scores, b_kl, b_non_score, b_advantages, b_returns = _advantages(
                    ppo, estimator, adv_settings, kl_ctl.value, rollout, scores, b_logprobs, b_values, b_ref_logprobs)
                # the engine's log-probs against the trainer's (reused: the update's, compared after it)
                engine_metrics, is_weights = ({}, None) if reuse or not cfg.rollout.recompute_logprobs \
                    else engine.correction(rollout, b_logprobs, b_policy)
                if is_weights is not None:
                    b_advantages = b_advantages * is_weights
            # ---- 5. PPO epochs over shuffled mini-batches, gradient accumulation over micro-batches
            lr = scheduler.get_last_lr()[0]  # logged: the rate of this update's first step
            stats, stat_keys = ppo_update(cfg, accelerator, model, opt, UpdateBatch(
                rollout.query, rollout.query_mask, rollout.response, b_mask, b_logprobs, b_advantages,
                b_ref_logprobs, b_values, b_returns, b_policy), reuse,
                shuffle_seed=update_seed(cfg.seed, accelerator.process_index, state.step))
            t_train = time.perf_counter()
            # ---- 6. metrics, KL controller, log
            with torch.no_grad():
                if reuse:  # the KL and the engine's gap, from the log-probs the update filled in (no KL in the reward)
                    b_kl = kl_penalty(b_logprobs, b_ref_logprobs, ppo.kl_estimator) * b_policy
                    engine_metrics, _ = engine.correction(rollout, b_logprobs, b_policy)
                objective = objective_metrics(rollout, scores, b_scores, b_kl, b_non_score, b_logprobs, b_policy,
                                              b_values, b_returns, adv_settings.num_generations)
                metrics = reduced_metrics(accelerator, stats, stat_keys, objective, state.step + 1)
            kl_ctl_before = kl_ctl.value
            kl_ctl.update(metrics["objective/kl"], ppo.local_batch_size * world)
            state.step += 1
            state.episode += ppo.local_batch_size * world
            tokens = (b_mask.sum() + rollout.query_mask.sum()).item() * world
            metrics.update({"lr": lr, "kl_coef": kl_ctl_before,
                            **timings(ppo.local_batch_size * world, tokens, t0, t_sync, t_gen, t_reward, t_fwd,
                                      t_train), **engine_metrics})
            metrics.update(reward_metrics(accelerator, reward_log))
            metrics.update(tool_metrics(accelerator, rollout))  # tool episodes: calls, failures, time in tools
            metrics.update(on_update(state.step, total_updates, model))
            log_update(cfg, accelerator, output_dir, state.step, state.episode, metrics, rollout, scores, reward_log)
            progress.update(1)
            progress.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
            # ---- 7. checkpoint. The last update always saves (below), so nothing after it (evaluation, final
            # save, report) can lose the run. A signal (Ctrl-C, SIGTERM) saves here, at the update boundary, and ends it.
            signum = stop.requested(accelerator)
            if signum is not None or (cfg.save_steps and state.step % cfg.save_steps == 0) \
                    or state.step == total_updates:
                saved = ckpt.save_checkpoint(accelerator, output_dir, model, tokenizer, trainer_state(),
                                             cfg.save_total_limit, optimizer, engine.checkpoint_state())
                saved_at = state.step
                # The last update's checkpoint is not pushed: the final push follows with the same weights.
                if on_save is not None and accelerator.is_main_process and signum is None \
                        and state.step < total_updates:
                    on_save(saved)
            if signum is not None:
                progress.close()
                accelerator.print(f"\ninterrupted: saved {saved}; continue with resume_from=auto")
                raise Stopped(signum, saved)
    progress.close()
    if saved_at != state.step:  # resumed at the end from a checkpoint outside output_dir: keep one here too
        ckpt.save_checkpoint(accelerator, output_dir, model, tokenizer, trainer_state(), cfg.save_total_limit,
                             optimizer, engine.checkpoint_state())
    return {**state.to_checkpoint(), "model": model, "checkpoint": output_dir / f"checkpoint-{state.step}"}


def update_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one update's mini-batch shuffles, from the run's seed, the process and the update alone:
    torch's global generator is shared with the rollout thread of asynchronous rollouts (vLLM's CPU sampler
    draws from it), so the shuffles keep their own. Int tuples hash the same in every run."""
    return hash((seed, rank, step, 1)) & 0x7FFFFFFF


def reuses_update_logprobs(ppo, estimator, kl_ctl, engine) -> bool:
    """Whether the update's own log-probs, detached, serve as the rollout's "as sampled" ones, so their
    separate no-grad forward is skipped (TRL's GRPOTrainer with num_iterations=1): one optimizer step
    per rollout, no critic, no KL in the reward, and an engine that samples the current weights and needs no
    importance weights (`Engine.on_policy`): a separate forward would give the update's log-probs again."""
    return (ppo.num_ppo_epochs == 1 and ppo.num_mini_batches == 1 and not estimator.needs_critic
            and kl_ctl.value == 0 and not ppo.adaptive_kl and engine.on_policy)


def _advantages(ppo, estimator, settings, kl_coef: float, rollout, scores, b_logprobs, b_values, b_ref_logprobs):
    """The rollout's rewards per token (the score on the last token the policy wrote, -kl_coef·KL on every
    one it wrote) and their advantages, all on the policy's tokens: tool results get none.
    scores (n,); b_logprobs, b_ref_logprobs (n, R); b_values (n, R) or None
    -> (b_scores (n,) adjusted, b_kl, b_non_score, b_advantages (n, R), b_returns (n, R) or None)."""
    b_mask = rollout.policy_mask()
    b_scores = adjust_scores(scores, rollout.contains_stop, ppo.missing_eos_penalty, ppo.reward_scale, ppo.reward_clip)
    b_kl = kl_penalty(b_logprobs, b_ref_logprobs, ppo.kl_estimator) * b_mask
    b_rewards, b_non_score = token_rewards(b_scores, b_kl, b_mask, kl_coef)
    if ppo.whiten_rewards:
        b_rewards = masked_whiten(b_rewards, b_mask, shift_mean=False, all_reduce=settings.all_reduce)
    b_advantages, b_returns = estimator.estimate(b_rewards, b_values, b_mask, settings)
    return b_scores, b_kl, b_non_score, b_advantages, b_returns


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


def _rollout_forwards(cfg, accelerator, model, ref_policy, rollout, reuse: bool, critic: bool):
    """No-grad forwards over the rollout in chunks of local_rollout_forward_batch_size.

    -> (b_logprobs (n, R): the policy as sampled, zeros when `reuse` (the update fills them in), the engine's
    own with rollout.recompute_logprobs=false (no forward of the policy: veRL's recompute_old_log_prob=false);
    b_values (n, R), or None without a `critic`; b_ref_logprobs (n, R)), all zero past each response and
    on tool results (the forwards attend to them; nothing is trained on them)."""
    ppo = cfg.ppo
    b_query, b_qmask, b_resp, b_mask = rollout.query, rollout.query_mask, rollout.response, rollout.mask
    b_policy = rollout.policy_mask()
    chunks = list(_chunks(b_resp.shape[0], ppo.local_rollout_forward_batch_size))
    # the engine's log-probs as the old policy's (recompute_logprobs=false); None: reused, or the forward's below
    sampled = None if reuse or cfg.rollout.recompute_logprobs else rollout.logprobs
    with torch.no_grad():
        parts = [] if reuse or sampled is not None else [
            logprobs_values(model, b_query[s], b_qmask[s], b_resp[s], b_mask[s], ppo.temperature) for s in chunks]
        if reuse:
            b_logprobs = torch.zeros_like(b_mask)
        else:
            b_logprobs = (sampled.float() if sampled is not None else torch.cat([p[0] for p in parts])) * b_policy
        b_values = torch.cat([p[1] for p in parts]) * b_policy if critic else None
        with accelerator.autocast(), accelerator.unwrap_model(model).reference(ref_policy) as ref:
            b_ref_logprobs = torch.cat([ref_logprobs(ref, b_query[s], b_qmask[s], b_resp[s], b_mask[s], ppo.temperature)
                                        for s in chunks]) * b_policy
    return b_logprobs, b_values, b_ref_logprobs

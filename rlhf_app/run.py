"""The composition root of `rlhf-app train`: each step below is one call into the module that owns it.

config (the argument) → network env → settings checks → claim the run folder → accelerator and
trackers → tokenizer, data and their checks → models → reward → engine → evaluation before →
train (its last update always checkpointed) → evaluation after → report → final/ (written last) →
push. Heavy libraries are imported inside `run`, after the offline switches are in the environment
(huggingface_hub reads them once, at import).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlhf_app import footprint, launch, preflight
from rlhf_app.config import TrainConfig
from rlhf_app.failures import explained, hub_access
from rlhf_app.offline import set_network_env


def run(cfg: TrainConfig) -> dict:
    """Train as `cfg` says, holding the run folder (checks, lock) from the first write to the last."""
    # ---- network env; triton kept out of a process that cannot use it (footprint.py)
    set_network_env(cfg.offline)
    with footprint.without_triton(cfg.rollout.engine):
        return _claimed(cfg)


def _claimed(cfg: TrainConfig) -> dict:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from rlhf_app.config.train_config import num_updates
    from rlhf_app.run_dir import claim

    # ---- settings checks: the mistakes that need neither the run folder nor a model, before anything is written
    reward_sources, hub_token = preflight.check_settings(cfg)
    from rlhf_app.rewards import resolve_gold

    gold_sources = resolve_gold(cfg)  # reward.gold: scored beside the reward at each evaluation
    # ---- claim the run folder. As the Accelerator would start: ACCELERATE_USE_CPU=1 makes a launch MULTI_CPU (gloo).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    preflight.check_overlap(cfg.rollout, state.num_processes)
    total_updates = num_updates(cfg.ppo, state.num_processes)
    with claim.claim(cfg, state, total_updates):
        per_update = cfg.ppo.local_batch_size * state.num_processes
        if cfg.ppo.total_episodes % per_update and state.is_main_process:  # TRL rounds up too: a note is enough
            print(f"note: one update takes {per_update} episodes, so ppo.total_episodes={cfg.ppo.total_episodes} "
                  f"is rounded up to {total_updates} update{'s' * (total_updates > 1)} "
                  f"({total_updates * per_update} episodes), as TRL does")
        if gold_sources and not cfg.eval_steps and state.is_main_process:
            print("note: reward.gold is scored at each evaluation; set eval_steps=N to follow it (and keep the "
                  "gold-best policy) during training: now only before and after")
        return _run(cfg, reward_sources, hub_token, gold_sources)


def _run(cfg: TrainConfig, reward_sources: list, hub_token: str | None, gold_sources: list | None = None) -> dict:
    import torch
    from accelerate.utils import set_seed
    from trl.models.utils import unwrap_model_for_generation

    from rlhf_app import evaluation, rewards
    from rlhf_app.data import prompts as data
    from rlhf_app.engines import build_engine
    from rlhf_app.hub import pusher as hub_pusher
    from rlhf_app.models import policy as models
    from rlhf_app.rl import loop as trainer
    from rlhf_app.run_dir.atomic import remove_dir, write_json
    from rlhf_app.run_dir.signals import EndPhase

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # ---- accelerator, trackers, config.yaml in the run folder
    accelerator = launch.start(cfg)
    out = Path(cfg.output_dir)
    # ---- tokenizer, data, then the checks that need them
    # The main process first: it builds offline assets / fills the Hub cache, the others then read it.
    with hub_access("the policy", cfg.model.name_or_path, cfg), accelerator.main_process_first():
        tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.chat_template)
        model_config = models.load_model_config(cfg.model)
    preflight.check_engine(cfg, model_config)  # vLLM reads the architecture from the config: before any weights
    hub_data = cfg.data.name if cfg.data.source == "hub" else None
    with hub_access("the dataset", hub_data, cfg), accelerator.main_process_first():
        train_ds, eval_ds = data.load_prompts(cfg, tokenizer)
        rewards.resolve_sources(cfg, train_ds.column_names)
        rewards.resolve_gold(cfg, train_ds.column_names)
    preflight.check_positions(model_config, {"training": train_ds, "held-out": eval_ds}, cfg.ppo.response_length)
    preflight.check_prompts_fill_a_batch(len(train_ds), cfg.ppo.local_batch_size, accelerator.num_processes,
                                         cfg.algorithm.group_size)
    # ---- models
    with hub_access("the policy", cfg.model.name_or_path, cfg), accelerator.main_process_first():
        model, ref_policy = models.build_models(cfg)
    # ---- reward
    with hub_access("the reward model", cfg.reward.model, cfg), accelerator.main_process_first():
        reward_fn = rewards.build_reward(cfg, accelerator.device, reward_sources)
        gold_fn = rewards.build_reward(rewards.gold_config(cfg), accelerator.device, gold_sources) \
            if gold_sources else None
    accelerator.print(f"policy {cfg.model.name_or_path}: {sum(p.numel() for p in model.parameters()):,} "
                      f"parameters; {len(train_ds)} training prompts, {len(eval_ds)} held out; "
                      f"reward {' + '.join(s.name for s in reward_sources)}"
                      + (f"; gold {' + '.join(s.name for s in gold_sources)}" if gold_sources else ""))
    # ---- engine
    set_seed(cfg.seed + accelerator.process_index)  # each process samples its own responses
    engine = build_engine(cfg, accelerator, model, tokenizer)
    eval_engine = engine.evaluation_engine()  # None: evaluations use the policy's own generate
    # ---- evaluation before training, kept in eval.json at once: a resume from this folder reuses it
    evals = {}
    if cfg.eval_before_after and accelerator.is_main_process:
        evals = _earlier_evaluation(cfg, out, len(eval_ds))
        if "before" not in evals:
            evals["before"] = evaluation.evaluate_policy(cfg, model, tokenizer, eval_ds, reward_fn,
                                                         accelerator.device, engine=eval_engine, gold_fn=gold_fn)
            write_json(out / "eval.json", evals)
        accelerator.print(evaluation.eval_line("before", evals["before"]))
    # ---- train (hub.strategy=every_save|checkpoint: each checkpoint pushed in the background as it is saved)
    pusher = hub_pusher.pusher(cfg, out, hub_token) if accelerator.is_main_process else None
    every = evaluation.EvalEvery(cfg, accelerator, tokenizer, eval_ds, reward_fn, eval_engine, gold_fn)
    with explained(cfg, reward_fn):
        state = trainer.train(cfg, accelerator, model, ref_policy, tokenizer, train_ds, reward_fn, out, engine,
                              on_save=pusher, on_update=every)
    prepared, checkpoint = state.pop("model"), state.pop("checkpoint")
    # ---- after the last update, whose checkpoint is saved: a signal stops at once with one line (the
    # evaluation, the report and final/ are redone by resume_from=auto), but lets final/ complete.
    push_hint = f"push it with rlhf-app push run_dir={out}" if cfg.hub.push else None
    with EndPhase(checkpoint, out / "final", accelerator.is_main_process, push_hint) as end:
        # Collective: under ZeRO-3 / FSDP each process holds a shard; the main process gets the full weights.
        weights = accelerator.get_state_dict(prepared)
        model = accelerator.unwrap_model(prepared)
        # ---- evaluation after training, and the critic's values along two completions
        if cfg.eval_before_after:
            # Every process evaluates the same prompts with the same seed (ZeRO-3 gathers the weights
            # collectively; FSDP needs every process in each forward); the main process writes the results.
            with unwrap_model_for_generation(prepared, accelerator) as unwrapped:
                evals["after"] = evaluation.evaluate_policy(cfg, unwrapped, tokenizer, eval_ds, reward_fn,
                                                            accelerator.device, engine=eval_engine, gold_fn=gold_fn)
                values = evaluation.values_along(unwrapped, tokenizer, evals["after"]["samples"],
                                                 accelerator.device) \
                    if cfg.algorithm.uses_critic else None  # critic-free estimators have no values to show
        # ---- report, then final/: the last thing written, so a folder with final/ holds a finished run
        if accelerator.is_main_process:
            if every.gold is not None and every.gold.best is not None:  # the update to keep, named
                best = evals["gold_best"] = every.gold.best
                accelerator.print(f"gold peaked at update {best['step']} (gold {best['gold']:.4g}, proxy "
                                  f"{best['proxy']:.4g}): that policy is in {out / 'gold-best'}")
            if cfg.eval_before_after:
                accelerator.print(evaluation.eval_line("after", evals["after"]))
                write_json(out / "eval.json", evals)
                if values is not None:
                    write_json(out / "values.json", values)
            _report(out)
        with end.finishing():
            if accelerator.is_main_process:
                _save_final(model, tokenizer, weights, state, out)
                if not cfg.save_steps:  # kept only for the end phase: save_steps=0 asks for no checkpoints
                    remove_dir(checkpoint)
                accelerator.print(f"saved {out / 'final'}")
        # The DDP wrapper and its reducer (see launch.end), and the vLLM engine, whose shutdown tears
        # down its own process groups: both must be collected while the default group still exists.
        engine.close()
        del prepared, engine, eval_engine
        launch.end(accelerator)
        # ---- push
        if cfg.hub.push and accelerator.is_main_process:
            from rlhf_app.hub import upload as hub

            if pusher is not None:
                pusher.finish()  # the checkpoint upload in flight first: the final push replaces it
            hub.push(out, cfg)
    return {**state, "model": model, "eval": evals}


def _save_final(model, tokenizer, weights: dict, state: dict, out: Path) -> None:
    """final/ whole or not at all, marked with the update it finished at: a later resume must not
    replace final/ with older weights."""
    from rlhf_app.models.policy import save_policy
    from rlhf_app.run_dir.atomic import replace_dir

    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(model, tokenizer, tmp, state_dict=weights)
    (tmp / "trainer_state.json").write_text(json.dumps({"step": state["step"], "episode": state["episode"]}))
    replace_dir(tmp, out / "final")


def _earlier_evaluation(cfg: TrainConfig, out: Path, num_eval: int) -> dict:
    """{"before": ...} of eval.json when this run resumes from a checkpoint in `out` (its settings were
    checked against the checkpoint's) and the evaluation has as many prompts; else {}."""
    from rlhf_app.run_dir.checkpoint import find_resume

    try:
        resume = find_resume(cfg.resume_from, out)
        before = json.loads((out / "eval.json").read_text())["before"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if resume is None or resume.resolve().parent != out.resolve() or len(before.get("samples", ())) != num_eval:
        return {}
    return {"before": before}


def _report(out: Path) -> None:
    try:
        from rlhf_app.report.page import write_report
    except ImportError:
        return
    print(f"report: {write_report(out)}")

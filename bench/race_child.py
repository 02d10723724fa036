"""One run of the race (bench/race.py) in its own process: train one side, then evaluate its snapshots.

    python bench/race_child.py SPEC.json RESULT.json

Training: the clock starts before the models are built (ours: policy, reference, vLLM engine; TRL: the
policy and GRPOTrainer) and stops after the last update; LoRA snapshots (the adapter weights) are saved
every few updates with the clock paused. The run stops at the recipe's episodes or, for the GRPO sides,
at the wall-time cap after an update. Then, clock stopped, every snapshot is loaded into one policy built
by rlhf_app and scored by rlhf_app's evaluation (evaluation.evaluate_policy: the recipe's engine, sampling
and reward, seeded) on the held-out sets: the same code for every side.

A killed run continues from its evaluation: when training ends, its figures and snapshot list go to
`trained.json`, and each snapshot's scores to `scored/update-N.json` as they come, so a rerun in the same
folder (bench/race.py keeps it when the spec is the same) scores only the snapshots not yet scored. A run
killed while training starts over: its clock would not be one run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import common  # noqa: E402
import outputs  # noqa: E402
import race_config  # noqa: E402


class TimeUp(Exception):
    """The wall-time cap passed at an update boundary (its snapshot is taken)."""


class Snapshots:
    """The training clock (snapshot saves taken out) and the adapter snapshots along it."""

    def __init__(self, folder: Path, every: int, episodes_per_update: int, time_cap_s: float | None):
        self.folder, self.every, self.batch, self.cap = folder, every, episodes_per_update, time_cap_s
        self.points, self.t0, self.paused = [], None, 0.0
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def time_up(self) -> bool:
        return self.cap is not None and self.now() >= self.cap

    def at_update(self, update: int, last: bool, peft_model) -> bool:
        """After `update` updates: a snapshot when due, the last or the time is up. -> whether to stop."""
        stop = self.time_up() and not last
        if update % self.every == 0 or last or stop:
            self.take(update, peft_model)
        return stop

    def take(self, update: int, peft_model) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        at, start = self.now(), time.perf_counter()
        state = {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}
        path = self.folder / f"update-{update}.safetensors"
        save_file(state, str(path))
        self.points.append({"update": update, "episodes": update * self.batch, "time_s": round(at, 2),
                            "snapshot": str(path)})
        self.paused += time.perf_counter() - start


def train_ours(cfg, snaps: Snapshots) -> None:
    """rlhf_app's own loop (rl/loop.train), composed as run.py composes it, with a snapshot hook."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from rlhf_app import footprint, rewards
    from rlhf_app.data import prompts as data
    from rlhf_app.engines import build_engine
    from rlhf_app.models import policy as models
    from rlhf_app.rl import loop as trainer

    with footprint.without_triton(cfg.rollout.engine):
        tokenizer = models.load_tokenizer(cfg.model.name_or_path)
        train_ds, _ = data.load_prompts(cfg, tokenizer)
        accelerator = Accelerator(cpu=True)
        reward_fn = rewards.build_reward(cfg, accelerator.device)
        snaps.start()
        model, ref = models.build_models(cfg)
        set_seed(cfg.seed)
        engine = build_engine(cfg, accelerator, model, tokenizer)
        snaps.take(0, model.policy)

        def on_update(step: int, total: int, prepared) -> dict:
            if snaps.at_update(step, step == total, accelerator.unwrap_model(prepared).policy):
                raise TimeUp
            return {}

        try:
            trainer.train(cfg, accelerator, model, ref, tokenizer, train_ds, reward_fn, Path(cfg.output_dir), engine,
                          on_update=on_update)
        except TimeUp:
            pass
        engine.close()


def trl_reward(cfg, device):
    """rlhf_app's reward callable for TRL's reward_funcs, its scores clipped at ppo.reward_clip as ours are."""
    from rlhf_app import rewards

    fn, clip = rewards.build_reward(cfg, device), cfg.ppo.reward_clip

    def reward(prompts, completions, **kwargs):
        scores = fn(prompts, completions, **kwargs)
        return scores if clip is None else [None if s is None else max(-clip, min(clip, s)) for s in scores]

    reward.__name__ = cfg.reward.name  # TRL logs rewards/<name>
    return reward


def train_trl(cfg, snaps: Snapshots) -> None:
    from transformers import AutoModelForCausalLM, TrainerCallback, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_app.assets.registry import resolve
    from rlhf_app.data import prompts as data
    from rlhf_app.models import policy as models
    from rlhf_app.models.loading import from_pretrained_kwargs

    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    train_ds, _ = data.load_prompts(cfg, tokenizer)
    train_ds = train_ds.remove_columns(["input_ids"])  # TRL tokenizes the prompt text itself
    reward = trl_reward(cfg, "cpu")
    per_update = race_config.optimizer_steps_per_update(cfg)

    class Snap(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            snaps.take(0, trainer.model)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % per_update == 0 and snaps.at_update(
                    state.global_step // per_update, state.global_step >= state.max_steps, trainer.model):
                control.should_training_stop = True

    snaps.start()
    set_seed(cfg.seed)
    policy = AutoModelForCausalLM.from_pretrained(resolve(cfg.model.name_or_path), **from_pretrained_kwargs(cfg))
    args = GRPOConfig(**race_config.trl_kwargs(cfg, cfg.output_dir))
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=train_ds,
                          processing_class=tokenizer, peft_config=models.lora_config(cfg.peft), callbacks=[Snap()])
    trainer.train()


def eval_sets(cfg, tokenizer, n: int, few: bool) -> dict:
    """The held-out sets: IMDB's held-out prompts; GSM8K's unseen generated problems and the real items."""
    from datasets import Dataset

    from rlhf_app.data import prompts as data

    if cfg.data.name != "gsm8k":
        return {"heldout": data.load_prompts(cfg, tokenizer)[1]}
    import phases

    problems = phases.problem_sets(cfg, n)
    if few:  # --quick / --held-out: the n shortest real items (the tiny model has 256 positions in all)
        problems["real"] = sorted(problems["real"], key=lambda p: len(p["question"]))[:n]
    return {name: Dataset.from_list(data.gsm8k_rows(rows, tokenizer, cfg, f"{name} eval"))
            for name, rows in problems.items()}


def score_points(points: list[dict], scored: Path, build_scorer) -> int:
    """Each point's figures (in place: point["sets"][name] and point["all"]), read from `scored/update-N.json`
    when an earlier process scored it, else from `build_scorer()(point)` (built once, only when some point
    needs it) and written there at once. -> how many came from earlier processes."""
    scored.mkdir(parents=True, exist_ok=True)
    todo = []
    for point in points:
        done = scored / f"update-{point['update']}.json"
        if done.is_file():
            point.update(json.loads(done.read_text()))
        else:
            todo.append(point)
    if todo:
        score = build_scorer()
        for point in todo:
            figures = score(point)
            outputs.write_result(figures, scored / f"update-{point['update']}.json")  # whole, or absent after a kill
            point.update(figures)
    for point in points:
        point.pop("snapshot", None)
    return len(points) - len(todo)


def evaluate(cfg, points: list[dict], n: int, few: bool, scored: Path) -> int:
    """Score each snapshot with rlhf_app's evaluation (score_points: those an earlier process scored are read
    back). -> how many were read back."""
    engines = []

    def build_scorer():
        import torch
        from accelerate import Accelerator
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from rlhf_app import evaluation, rewards
        from rlhf_app.engines import build_engine
        from rlhf_app.models import policy as models

        tokenizer = models.load_tokenizer(cfg.model.name_or_path)
        sets = eval_sets(cfg, tokenizer, n, few)
        accelerator = Accelerator(cpu=True)
        model, _ = models.build_models(cfg)
        reward_fn = rewards.build_reward(cfg, accelerator.device)
        engine = build_engine(cfg, accelerator, model, tokenizer)
        engines.append(engine)  # closed once every snapshot is scored

        def score(point: dict) -> dict:
            loaded = set_peft_model_state_dict(model.policy, load_file(point["snapshot"]))
            if getattr(loaded, "unexpected_keys", None):
                raise SystemExit(f"snapshot of update {point['update']}: keys the evaluation's LoRA does not have: "
                                 f"{loaded.unexpected_keys[:3]}")
            with torch.no_grad():
                sets_scored = {name: _figures(evaluation.evaluate_policy(
                    cfg, model.eval(), tokenizer, ds, reward_fn, accelerator.device,
                    engine=engine.evaluation_engine())) for name, ds in sets.items()}
            return {"sets": sets_scored, "all": pooled(sets_scored)}
        return score

    earlier = score_points(points, scored, build_scorer)
    for engine in engines:
        engine.close()
    return earlier


def _figures(result: dict) -> dict:
    from rlhf_app.evaluation import eval_metrics

    flat = {k.removeprefix("eval/"): v for k, v in eval_metrics(result).items()}
    return {"n": len(result["samples"]), **flat, "sample": result["samples"][0]["completion"][:200]}


def pooled(sets: dict) -> dict:
    """Each numeric figure over all sets, weighted by their sizes."""
    total = sum(s["n"] for s in sets.values())
    keys = set.intersection(*(set(s) for s in sets.values())) - {"n", "sample"}
    return {"n": total, **{k: sum(s[k] * s["n"] for s in sets.values()) / total for k in sorted(keys)}}


def main(spec_path: str, result_path: str) -> None:
    from engines import pin_threads
    from rlhf_app.offline import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV, TOKENIZERS_PARALLELISM="false")
    spec = json.loads(Path(spec_path).read_text())
    pinned = pin_threads(spec["threads"])
    recipe, side, seed = spec["recipe"], spec["side"], spec["seed"]
    cfg = race_config.side_config(recipe, side, seed, spec["threads"], spec["quick"], spec["extra"],
                                  spec["peer_factor"], spec["held_out"])
    cfg.output_dir = spec["out_dir"]
    every = race_config.updates_per_snapshot(race_config.side_config(recipe, "ours", seed, quick=spec["quick"],
                                                                     extra=spec["extra"]), recipe, spec["points"])
    out = Path(spec["out_dir"])
    import torch

    if (out / "trained.json").is_file():  # trained by an earlier process that was stopped while evaluating
        trained = json.loads((out / "trained.json").read_text())
        print(f"[race] training finished in an earlier process ({trained['train_s']} s): scoring its snapshots",
              file=sys.stderr, flush=True)
    else:
        snaps = Snapshots(out / "snapshots", every, cfg.ppo.local_batch_size, spec["time_cap_s"])
        (train_ours if side.startswith("ours") else train_trl)(cfg, snaps)
        trained = {"train_s": round(snaps.now(), 1), "peak_rss_mib": round(common.peak_rss_mib(), 1),
                   "load_avg_train": os.getloadavg(), "every": every, "threads": pinned,
                   "stopped_by_time_cap": bool(snaps.points) and snaps.cap is not None
                   and snaps.points[-1]["update"] * cfg.ppo.local_batch_size < cfg.ppo.total_episodes,
                   "points": snaps.points}
        outputs.write_result(trained, out / "trained.json")
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        earlier = evaluate(race_config.eval_config(recipe, seed, spec["threads"], spec["quick"], spec["extra"],
                                                   spec["held_out"]),
                           trained["points"], race_config.held_out(recipe, spec["quick"], spec["held_out"]),
                           spec["quick"] or spec["held_out"] is not None, out / "scored")
    result = {**trained, "eval_s": round(time.perf_counter() - start, 1)}
    if earlier:  # eval_s then covers this process's share only
        result["points_scored_before_a_restart"] = earlier
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])

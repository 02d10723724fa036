"""`rlhf-app pairs`: preference pairs from a policy's own completions, labelled by a reward source.

config → network env → the labeller imported (reward.funcs / reward.name, as PPO builds its reward) → tokenizer,
prompts (data.*: the training split; PPO's held-out prompts stay unseen) and their checks → claim the run folder
(refuse to overwrite, lock, config.yaml) → the policy → engine (rollout.engine, sampling as ppo.* says) →
`pairs.num_generations` completions per prompt, scored by the labeller → per prompt the best against the worst →
pairs_summary.json, then final/pairs.jsonl (written whole, last: a folder with final/ holds finished pairs).

final/pairs.jsonl is TRL's preference format with an explicit prompt: `prompt`, `chosen`, `rejected` (text, or
conversations when the prompts are: the prompt's messages and one assistant message each) and `margin`
= score(chosen) - score(rejected) >= 0. A prompt's pair is its highest-scored completion (the first sampled
among equals) against its lowest-scored (the last sampled among equals). A tie (margin <= pairs.tie_threshold)
is dropped, or with pairs.keep_ties=true kept as that same pair with its margin (0 for an exact tie).
A completion the labeller scores None is left out; a prompt left with fewer than two scores is an error.
`rm.dataset` takes final/ or final/pairs.jsonl; in a pipeline, `rm.dataset: stage:pairs`.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from rlhf_app.config import TrainConfig, to_yaml
from rlhf_app.data.columns import CONVERSATION_COLUMN
from rlhf_app.errors import UserError
from rlhf_app.offline import set_network_env

PAIRS_FILE = "pairs.jsonl"  # in final/
SUMMARY_FILE = "pairs_summary.json"  # in output_dir


class PairsError(UserError):
    """Pairs that cannot be made as asked (one line)."""


def _rank(scored: list[tuple[int, float]]) -> tuple[tuple[int, float], tuple[int, float]]:
    """(best, worst) of (index, score): the highest score, the first sampled among equals; the lowest, the last."""
    order = sorted(scored, key=lambda t: (-t[1], t[0]))
    return order[0], order[-1]


def make_pairs(rows: list[dict], completions: list[str], scores: list[float | None], k: int,
               tie_threshold: float = 0.0, keep_ties: bool = False, labeller: str = "the labeller"):
    """Rows of TRL's preference format from k completions per prompt (row i's are completions[i*k:(i+1)*k],
    with their scores, None: unscored). -> (pairs, counts {"ties", "unscored"})."""
    pairs, ties, unscored = [], 0, 0
    for i, row in enumerate(rows):
        group = list(zip(completions[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]))
        scored = [(j, s) for j, (_, s) in enumerate(group) if s is not None]
        unscored += k - len(scored)
        if len(scored) < 2:
            raise PairsError(f"{labeller} returned None for {k - len(scored)} of the {k} completions of prompt {i} "
                             f"({str(row['prompt'])[:60]!r}): a pair needs two scores; return a number for every "
                             "completion (or raise pairs.num_generations)")
        (b, best), (w, worst) = _rank(scored)
        margin = best - worst
        if margin <= tie_threshold:
            ties += 1
            if not keep_ties:
                continue
        chosen, rejected = group[b][0], group[w][0]
        messages = row.get(CONVERSATION_COLUMN)
        if messages is not None:  # conversational: TRL's explicit-prompt conversational format
            pairs.append({"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}], "margin": margin})
        else:
            pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "margin": margin})
    return pairs, {"ties": ties, "unscored": unscored}


def summary(cfg: TrainConfig, num_prompts: int, pairs: list[dict], counts: dict, labeller: list[str]) -> dict:
    s = cfg.pairs
    margins = [p["margin"] for p in pairs]
    return {"pairs": len(pairs), "prompts": num_prompts, "num_generations": s.num_generations,
            "ties": counts["ties"], "ties_dropped": 0 if s.keep_ties else counts["ties"],
            "tie_threshold": s.tie_threshold, "unscored_completions": counts["unscored"],
            "mean_margin": sum(margins) / len(margins) if margins else None,
            "policy": cfg.model.name_or_path, "labeller": labeller}


@contextlib.contextmanager
def claim(cfg: TrainConfig):
    """The run folder as the stages hold it: writable, locked, never replacing finished pairs unless
    overwrite_output_dir=true; config.yaml written."""
    from rlhf_app.run_dir.claim import RunDirError, RunLock, check_output_dir, holds_run
    from rlhf_app.run_dir.checkpoint import remove_leftovers
    from rlhf_app.run_dir.outputs import clear_run

    out = Path(cfg.output_dir)
    check_output_dir(cfg.output_dir)
    lock = RunLock(out)
    lock.acquire()
    try:
        remove_leftovers(out)
        if holds_run(out):
            if cfg.overwrite_output_dir:
                clear_run(out)
                print(f"note: overwrite_output_dir=true: removed the earlier run in {out}")
            elif cfg.resume_from:
                raise RunDirError(f"the pairs in {out} are complete (final/{PAIRS_FILE}): nothing to continue; "
                                  "choose another output_dir, or overwrite_output_dir=true to make them again")
            else:
                raise RunDirError(f"output_dir={out} holds another run: replace it with overwrite_output_dir=true, "
                                  "or choose another output_dir")
        (out / "config.yaml").write_text(to_yaml(cfg))
        yield out
    finally:
        lock.release()


def _policy(cfg: TrainConfig, device):
    """The policy to sample from (no critic): a model folder or Hub id, asset:NAME, or a LoRA run's policy."""
    from transformers import AutoModelForCausalLM

    from rlhf_app.assets.registry import resolve
    from rlhf_app.models.loading import from_pretrained_kwargs
    from rlhf_app.models.policy import PolicyAndValue, load_policy

    path = resolve(cfg.model.name_or_path)
    if (Path(path) / "adapter_config.json").is_file():
        model, _ = load_policy(path, cfg.model.dtype)
    else:
        model = PolicyAndValue(AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs(cfg)),
                               value_head=False)
    return model.to(device).eval()


def label(labeller, rollout, device) -> list[float | None]:
    """The labeller's score of each completion; None where every one of its functions returned None."""
    from rlhf_app.rl.rollout import RewardLog, score

    log = RewardLog()
    scores = score(labeller, rollout, device, log=log).tolist()
    per_function = [log.extra[f"rewards/{name}"] for name in labeller.reward_names]
    return [None if all(math.isnan(f[i]) for f in per_function) else s for i, s in enumerate(scores)]


def run(cfg: TrainConfig) -> Path:
    """Sample, label and write the pairs as `cfg.pairs` says; returns final/ (holding pairs.jsonl)."""
    set_network_env(cfg.offline)
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env, set_seed

    from rlhf_app import preflight, rewards
    from rlhf_app.data import prompts as data
    from rlhf_app.engines import build_engine
    from rlhf_app.failures import hub_access
    from rlhf_app.models import policy as models
    from rlhf_app.run_dir.atomic import building, write_json

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    s, k = cfg.pairs, cfg.pairs.num_generations
    # ---- settings, the labeller, tokenizer and prompts: every mistake before the run folder or a model
    sources = rewards.resolve_sources(cfg)
    if cfg.rollout.engine == "vllm":
        from rlhf_app.engines.vllm_engine import import_vllm

        import_vllm()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes > 1:
        raise PairsError(f"rlhf-app pairs runs in one process, not {state.num_processes}: run it without "
                         "accelerate launch")
    with hub_access("the policy", cfg.model.name_or_path, cfg):
        tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.chat_template)
        model_config = models.load_model_config(cfg.model)
    preflight.check_engine(cfg, model_config)
    with hub_access("the dataset", cfg.data.name if cfg.data.source == "hub" else None, cfg):
        prompts, _ = data.load_prompts(cfg, tokenizer)  # the training split: PPO's held-out prompts stay unseen
    rewards.resolve_sources(cfg, prompts.column_names)
    if len(prompts) < 2:
        raise PairsError(f"{len(prompts)} training prompt makes at most one pair, and rlhf-app rm holds out a share "
                         "of the pairs: give at least 2 prompts (data.name, data.num_train)")
    preflight.check_positions(model_config, {"training": prompts}, cfg.ppo.response_length)
    with claim(cfg) as out:
        accelerator = Accelerator(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        with hub_access("the policy", cfg.model.name_or_path, cfg):
            model = _policy(cfg, accelerator.device)
        with hub_access("the reward model", cfg.reward.model, cfg):
            labeller = rewards.build_reward(cfg, accelerator.device, sources)
        names = [src.name for src in sources]
        print(f"pairs: {len(prompts)} prompts x {k} completions from {cfg.model.name_or_path} "
              f"({cfg.rollout.engine} engine), labelled by {' + '.join(names)}")
        set_seed(cfg.seed)
        engine = build_engine(cfg, accelerator, model, tokenizer)
        engine.sync_weights(model)
        rows, completions, scores = [], [], []
        for start in range(0, len(prompts), s.batch_size):
            batch = [prompts[i] for i in range(start, min(start + s.batch_size, len(prompts)))]
            rollout = engine.generate([row for row in batch for _ in range(k)])  # a prompt's k in a row
            rows += batch
            completions += rollout.completions
            scores += label(labeller, rollout, accelerator.device)
        engine.close()
        pairs, counts = make_pairs(rows, completions, scores, k, s.tie_threshold, s.keep_ties,
                                   f"the labeller ({' + '.join(names)})")
        result = summary(cfg, len(rows), pairs, counts, names)
        if len(pairs) < 2:
            raise PairsError(f"{len(pairs)} pair left of {len(rows)} prompts ({counts['ties']} ties within "
                             f"pairs.tie_threshold={s.tie_threshold} dropped): rlhf-app rm needs at least 2; add "
                             "prompts, raise pairs.num_generations, or keep ties (pairs.keep_ties=true)")
        write_json(out / SUMMARY_FILE, result)
        with building(out / "final") as tmp:  # the finished marker: written whole, last
            (tmp / PAIRS_FILE).write_text("".join(json.dumps(p) + "\n" for p in pairs))
        mean = f"{result['mean_margin']:.4g}" if result["mean_margin"] is not None else "-"
        print(f"pairs written: {len(pairs)} of {len(rows)} prompts ({counts['ties']} ties "
              f"{'kept' if s.keep_ties else 'dropped'}), mean margin {mean}: {out / 'final' / PAIRS_FILE}")
    return out / "final"

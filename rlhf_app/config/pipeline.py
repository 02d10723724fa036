"""A pipeline's names and references, checked with the rest of the config (plain data, no torch).

`stages: [sft, rm, ppo]` runs the stages in order, each in `output_dir/<stage>/`; a stage is named by
its kind (sft, rm, pairs, ppo) or `KIND-label` (`ppo-long`) when a kind runs twice. `per_stage.NAME.<key>`
sets a key for that stage alone; a value `stage:NAME` anywhere in a stage's config (a model path, an
entry of reward.funcs) means that earlier stage's final/ folder. Every mistake here is one line before
anything runs; the stage configs themselves are built by rlhf_app/stages/pipeline.py.
"""

from __future__ import annotations

import difflib
import re

from rlhf_app.config.checks import ConfigError

STAGE_KINDS = ("sft", "rm", "pairs", "ppo")
REFERENCE = "stage:"
# Keys of the pipeline as a whole: a stage gets them from the pipeline (its folder is output_dir/<stage>).
PIPELINE_KEYS = ("stages", "per_stage", "output_dir", "recipe", "resume_from", "overwrite_output_dir",
                 "print_config")
# The keys each kind reads (None: all): a `stage:` reference elsewhere is not its concern (a pipeline's
# reward.funcs=[stage:rm] is PPO's, not the SFT stage's before rm), nor is a change there once it finished.
READS = {"sft": ("seed", "model.", "peft.", "sft."), "rm": ("seed", "model.", "peft.", "rm."), "ppo": None,
         # pairs: the policy, its prompts, how it samples, and the labeller (the reward keys but PPO's reward.gold*)
         "pairs": ("seed", "model.", "data.", "rollout.engine", "pairs.", "ppo.response_length", "ppo.temperature",
                   "ppo.do_sample", "ppo.stop_token", *(f"reward.{key}" for key in (
                       "name", "funcs", "weights", "model", "label", "kind", "score", "function", "method",
                       "format_score", "multiple_answers", "answer_at_end", "trailing_answer_score",
                       "trailing_answer_until", "target")))}
_NAME = re.compile(r"([a-z]+)(-[A-Za-z0-9_.]+)?")


def stage_kind(name: str) -> str:
    """'ppo-long' -> 'ppo'."""
    return name.split("-", 1)[0]


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{'a.b': value} for every leaf of a nested dict (a list is one leaf)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def references(leaves: dict) -> list[tuple[str, str]]:
    """(key, stage name) for every `stage:NAME` value among `leaves` (list entries too)."""
    found = []
    for key, value in leaves.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item.startswith(REFERENCE):
                found.append((key, item[len(REFERENCE):]))
    return found


def stage_leaves(tree: dict, per_stage: dict, name: str) -> dict:
    """The leaves of stage `name`'s config: the pipeline's with its per_stage keys on top."""
    return {**_leaves(tree), **_leaves(per_stage.get(name) or {})}


def _check_names(stages: list[str]) -> None:
    for name in stages:
        match = _NAME.fullmatch(str(name))
        if not match or match.group(1) not in STAGE_KINDS:
            close = difflib.get_close_matches(stage_kind(str(name)), STAGE_KINDS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"stages: unknown stage {name!r}: {hint}a stage is one of {', '.join(STAGE_KINDS)}, "
                              "or KIND-label when a kind runs twice (ppo-long)")
        if stages.count(name) > 1:
            raise ConfigError(f"stages lists {name} twice: each stage has its own folder, so name the second "
                              f"{stage_kind(name)}-<label> (e.g. {stage_kind(name)}-2)")


def check_stages(stages: list[str], per_stage: dict, tree: dict) -> None:
    """Stage names, per_stage keys and `stage:` references; `tree` is the whole config (a nested dict,
    per_stage left out). Raises ConfigError with one line."""
    if not stages:
        if per_stage:
            raise ConfigError(f"per_stage sets keys for stages ({', '.join(per_stage)}) but stages is empty: "
                              "list them, e.g. stages=[sft,ppo], and run rlhf-app pipeline")
        for key, target in references(_leaves(tree)):
            raise ConfigError(f"{key}={REFERENCE}{target} names a pipeline stage: list the stages (e.g. "
                              f"stages=[{target},ppo]) and run rlhf-app pipeline, or give a model path")
        return
    _check_names(stages)
    listed = ", ".join(stages)
    for name, keys in per_stage.items():
        if name not in stages:
            raise ConfigError(f"per_stage.{name}: no stage {name} in stages [{listed}]")
        for key in _leaves(keys or {}):
            if key.split(".", 1)[0] in PIPELINE_KEYS:
                raise ConfigError(f"per_stage.{name}.{key} is set for the whole pipeline, not per stage "
                                  f"(stage {name} runs in output_dir/{name})")
    if tree.get("hub", {}).get("push") and len(stages) > 1:
        raise ConfigError("hub.push=true in a pipeline would push every stage to one repository: push one "
                          f"stage, e.g. per_stage.{stages[-1]}.hub.push=true")
    for index, name in enumerate(stages):
        for key, target in references(stage_leaves(tree, per_stage, name)):
            reads = READS[stage_kind(name)]
            if target in stages[:index] or (reads is not None and not key.startswith(reads)):
                continue
            if target == name:
                why = f"names {name} itself: a stage starts from stages before it; give {name} its own " \
                      f"value with per_stage.{name}.{key}=..."
            elif target in stages:
                why = f"names a stage that runs after {name} (stages: {listed}): reorder the stages"
            else:
                why = f"names no stage of this pipeline (stages: {listed})"
            raise ConfigError(f"stage {name}: {key}={REFERENCE}{target} {why}")


def refuse_pipeline(cfg, command: str) -> None:
    """`rlhf-app train recipe=<a pipeline>`: one line naming the pipeline command (one stage runs as a pipeline)."""
    if cfg.stages:
        what = f"recipe={cfg.recipe}" if cfg.recipe else "..."
        raise ConfigError(f"this config is a pipeline (stages: {', '.join(cfg.stages)}), not one {command} run: "
                          f"run it with rlhf-app pipeline {what}, or set stages=[] for one run")

"""The model card of a pushed SFT or reward-model stage (`rlhf-app sft`, `rlhf-app rm`): front matter
(huggingface_hub's ModelCardData) and sections on the stage, its base model, dataset, TRL trainer, settings,
figures (final loss; for the reward model held-out pairwise accuracy and mean margin) and how to load it."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from rlhf_app.config import TrainConfig
from rlhf_app.config.stages import stage_settings
from rlhf_app.hub.card import _cell, _hub_id, base_license

TRAINERS = {"sft": "SFTTrainer", "rm": "RewardTrainer"}
TAGS = {"sft": ["trl", "sft"], "rm": ["trl", "reward-trainer", "reward-model"]}  # TRL's own tags, then ours
WHAT = {"sft": "A causal language model fine-tuned on demonstrations (supervised fine-tuning)",
        "rm": "A reward model (sequence classification, one logit) trained on preference pairs, Bradley–Terry"}


def run_stage(run_dir: Path, cfg: TrainConfig, metrics: list[dict]) -> str | None:
    """`sft` or `rm` when `run_dir` holds a stage run, else None (a PPO run). The folder decides (rm_eval.json,
    a Trainer's metric rows); a folder without metrics falls back to config.yaml's one stage section."""
    from rlhf_app.report.stage import is_stage_run, stage_of

    rm_eval = run_dir / "rm_eval.json"
    if metrics:
        return stage_of(metrics, rm_eval if rm_eval.is_file() else None) if is_stage_run(metrics) else None
    sections = [s for s in TRAINERS if getattr(cfg, s) is not None]
    return sections[0] if len(sections) == 1 else None


def _dataset_id(name: str | None) -> str | None:
    """The stage's dataset if it reads as a Hub dataset id (front matter must name an existing one)."""
    if not name or Path(name).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return None
    return name


def _figures(stage: str, metrics: list[dict], rm_eval: dict | None) -> str:
    losses = [r["loss"] for r in metrics if "loss" in r]
    held = [r["eval_loss"] for r in metrics if "eval_loss" in r]
    steps = max((r.get("step", 0) for r in metrics), default=0)
    rows = [("optimizer steps", steps), ("first training loss", losses[0] if losses else None),
            ("final training loss", losses[-1] if losses else None)]
    if stage == "sft":
        rows.append(("held-out loss", held[-1] if held else None))
    elif rm_eval:
        rows += [("held-out pairs", rm_eval.get("pairs")),
                 ("held-out pairwise accuracy", rm_eval.get("accuracy")),
                 ("held-out mean margin, score(chosen) − score(rejected)", rm_eval.get("mean_margin"))]
    else:
        rows.append(("held-out pairwise accuracy", "not recorded (no rm_eval.json)"))
    lines = [f"| {name} | {'—' if value is None else _cell(value)} |" for name, value in rows]
    return "| figure | value |\n|---|---|\n" + "\n".join(lines)


def _loading(stage: str, repo: str, adapter: bool, conversational: bool) -> str:
    if stage == "sft":
        auto = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
        return f"""```python
from {"peft" if adapter else "transformers"} import {auto}
from transformers import AutoTokenizer

model = {auto}.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
inputs = tokenizer("the movie was", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))
```

As the starting policy of a PPO run of `rlhf_app`: `model.name_or_path={repo}`."""
    if conversational:
        score = """conversation = [{"role": "user", "content": "Say something kind."},
                {"role": "assistant", "content": "You did well today."}]
# trained on conversations: scored through the chat template, as RewardTrainer tokenized them
inputs = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)"""
    else:
        score = """# trained on text: RewardTrainer appended the EOS token to every text, so score it the same way
inputs = tokenizer("the movie was great" + tokenizer.eos_token, return_tensors="pt")"""
    return f"""```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
{score}
score = model(**inputs).logits[0, 0].item()  # higher: preferred
```

As the reward of a PPO run of `rlhf_app`: `reward.funcs=[{repo}]` (scored as above: `reward_append_eos` /
`reward_conversational` in config.json say how)."""


def stage_card(cfg: TrainConfig, stage: str, files: list[Path], metrics: list[dict], rm_eval: dict | None,
               model_config: dict, source: str = "final") -> str:
    """README.md of a stage's upload. `files`: the upload's paths (relative); `metrics`: metrics.jsonl's rows;
    `rm_eval`: rm_eval.json (reward model); `model_config`: the uploaded config.json."""
    from huggingface_hub import ModelCard, ModelCardData

    repo, section = cfg.hub.repo_id or "user/name", getattr(cfg, stage)
    names = {p.as_posix() for p in files}
    adapter = "adapter_config.json" in names
    dataset = _dataset_id(section.dataset)
    card_data = ModelCardData(
        base_model=_hub_id(cfg.model.name_or_path), datasets=[dataset] if dataset else None,
        license=base_license(cfg), library_name="peft" if adapter else "transformers",
        model_name=repo.split("/")[-1], pipeline_tag="text-generation" if stage == "sft" else "text-classification",
        tags=[*TAGS[stage], "rlhf_app"] + (["lora"] if adapter or cfg.peft.enabled else []))
    revision = f" (revision `{cfg.model.revision}`)" if cfg.model.revision else ""
    keys = stage_settings(stage, lora=cfg.peft.enabled)
    settings = "\n".join(f"| `{k}` | {_cell(functools.reduce(getattr, k.split('.'), cfg))} |" for k in keys)
    lora = (f" with LoRA (r={cfg.peft.r}, alpha={cfg.peft.lora_alpha}), adapters merged into the weights"
            if cfg.peft.enabled and not adapter else "")
    conversational = bool(model_config.get("reward_conversational")) or model_config.get("reward_append_eos") is False
    config = f" (configuration `{section.dataset_config}`)" if section.dataset_config else ""
    held = (f"split `{section.eval_split}`" if section.eval_split else
            f"a seeded {section.eval_fraction:g} of `{section.split}`")
    fmt = ("; pairs as conversations (chat template)" if conversational else "; pairs as text") if stage == "rm" else ""
    plots = [("plots/stage.png", "loss and TRL's metrics over steps"),
             ("plots/margins.png", "held-out margins score(chosen) − score(rejected)")]
    shown = "\n\n".join(f"![{alt}]({path})" for path, alt in plots if path in names) or "No plots were recorded."
    body = f"""
# {repo.split("/")[-1]}

{WHAT[stage]}, by `rlhf_app` on TRL's `{TRAINERS[stage]}`{lora}. Weights from `{source}/` of the run
(stage `{stage}`).

## Base model

`{cfg.model.name_or_path}`{revision}. Licence: {card_data.license or "not recorded; check the base model's"}.

## Dataset

`{section.dataset}`{config}, split `{section.split}`; held out: {held}, at most {section.num_eval} rows{fmt}.

## Training

TRL's `{TRAINERS[stage]}` with these settings (`{stage}.*` keep TRL's names; the full recipe is `config.yaml`,
every logged row `metrics.jsonl`):

| setting | value |
|---|---|
{settings}

## Results

{_figures(stage, metrics, rm_eval)}

{shown}

## How to load

{_loading(stage, repo, adapter, conversational)}
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")  # parses the front matter: a bad one fails here
    return str(card)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None

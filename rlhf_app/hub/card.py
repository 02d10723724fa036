"""The model card of a pushed run: YAML front matter (huggingface_hub's ModelCardData) and sections
on the base model, reward, dataset, hyper-parameters, before/after evaluation, diagnostics and loading."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from rlhf_app.config import TrainConfig

HUB_DATASETS = {"imdb": "stanfordnlp/imdb", "gsm8k": "openai/gsm8k"}  # data.name -> Hub id (data.source=hub)
HPARAMS = ("ppo.learning_rate", "ppo.lr_scheduler_type", "ppo.kl_coef", "ppo.kl_estimator", "ppo.adaptive_kl",
           "ppo.cliprange", "ppo.cliprange_value", "ppo.vf_coef", "ppo.ent_coef", "ppo.ent_cap", "ppo.reward_clip",
           "ppo.gamma", "ppo.lam", "ppo.whiten_rewards", "ppo.missing_eos_penalty", "ppo.num_ppo_epochs",
           "ppo.per_device_train_batch_size", "ppo.gradient_accumulation_steps", "ppo.num_mini_batches",
           "ppo.total_episodes", "ppo.response_length", "ppo.temperature", "model.value_model", "model.dtype",
           "peft.enabled", "seed")


def _hub_id(name: str) -> str | None:
    """`name` if it reads as a Hub model id (front matter must name an existing repo), else None."""
    if name.startswith("asset:") or Path(name).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return None
    return name


def base_license(cfg: TrainConfig) -> str | None:
    """`hub.license`, else the licence an offline asset or a local base-model folder declares."""
    if cfg.hub.license:
        return cfg.hub.license
    from rlhf_app.assets import registry as assets

    name = cfg.model.name_or_path
    folder = assets.cache_dir() / name[len(assets.PREFIX):] if name.startswith(assets.PREFIX) else Path(name)
    if (folder / "asset.json").is_file():
        return json.loads((folder / "asset.json").read_text()).get("license")
    if (folder / "README.md").is_file():
        from huggingface_hub import ModelCard

        return ModelCard.load(folder / "README.md", ignore_metadata_errors=True).data.license
    return None


def _describe_reward(spec: str, cfg: TrainConfig) -> str:
    """One reward source as the card names it: a built-in with its settings, a function, or a model."""
    r = cfg.reward
    builtins = {"toy": f"toy reward: frequency of {r.target!r} in the completion",
                "sentiment": f"sentiment classifier `{r.model}`: {r.kind} of label {r.label}"
                             + (", scoring prompt + completion" if r.score_prompt else ""),
                "gsm8k": f"GSM8K answer check ({r.method} extraction): {r.score} if correct, "
                         f"{r.format_score} if parsable but wrong",
                "python": f"custom reward function `{r.function}`"}
    if spec in builtins:
        return builtins[spec]
    if ":" in spec and not spec.startswith("asset:"):  # as rewards.sources reads a spec
        return f"reward function `{spec}`"
    return f"sequence-classification reward model `{spec}`"


def reward_source(cfg: TrainConfig) -> str:
    """The card's reward section: every reward function the run summed, with its weight.

    `reward.name` alone: "toy reward: frequency of 'a' in the completion."; `reward.funcs`: a line
    "The weighted sum ..." and one "- 0.5 × reward function `file.py:fn`" line per function.
    """
    specs = [str(s).strip() for s in cfg.reward.funcs] or [cfg.reward.name]
    weights = cfg.reward.weights or [1.0] * len(specs)
    if not cfg.reward.funcs and weights == [1.0]:
        return f"{_describe_reward(specs[0], cfg)}."
    lines = [f"- {_cell(float(w))} × {_describe_reward(spec, cfg)}" for spec, w in zip(specs, weights)]
    return "The weighted sum of these reward functions (`reward.funcs`, `reward.weights`):\n\n" + "\n".join(lines)


def reward_tags(cfg: TrainConfig) -> list[str]:
    """`reward:NAME` for each reward function: the built-in's name, a function's or a model's last part."""
    specs = [str(s).strip() for s in cfg.reward.funcs] or [cfg.reward.name]
    names = [spec.rpartition(":")[2].split("(")[0].strip() if ":" in spec and not spec.startswith("asset:")
             else spec.rstrip("/").split("/")[-1].removeprefix("asset:") for spec in specs]
    return [f"reward:{name}" for name in dict.fromkeys(names)]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:120]


def _eval_section(evaluation: dict | None) -> str:
    if not evaluation or not {"before", "after"} <= evaluation.keys():
        return "No before/after evaluation was recorded for this run (`eval_before_after=false`)."
    before, after = evaluation["before"], evaluation["after"]
    rows = [("mean score", before["mean_score"], after["mean_score"])]
    rows += [(k, before.get("extra", {}).get(k), v) for k, v in after.get("extra", {}).items()]
    lines = [f"The same {len(after.get('samples', []))} held-out prompts, sampled with the training settings "
             "and a fixed seed:", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    for name, b, a in rows:
        change = f"{a - b:+.4g}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        lines.append(f"| {name} | {_cell(b)} | {_cell(a)} | {change} |")
    pairs = list(zip(before.get("samples", []), after.get("samples", [])))[:3]
    if pairs:
        lines += ["", "| prompt | before | after |", "|---|---|---|"]
        lines += [f"| {_cell(b['prompt'])} | {_cell(b['completion'])} ({b['score']:.3g}) | "
                  f"{_cell(a['completion'])} ({a['score']:.3g}) |" for b, a in pairs]
    return "\n".join(lines)


def model_card(cfg: TrainConfig, files: list[Path], evaluation: dict | None, metrics: list[dict],
               source: str = "final") -> str:
    """README.md of the upload: YAML front matter (huggingface_hub's ModelCardData) and the sections.

    `files` are the upload's paths (relative); `evaluation` is eval.json, `metrics` the rows of metrics.jsonl.
    """
    from huggingface_hub import ModelCard, ModelCardData

    repo = cfg.hub.repo_id or "user/name"
    names = {p.as_posix() for p in files}
    adapter = "adapter_config.json" in names
    auto = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    library = "peft" if adapter else "transformers"
    data = cfg.data
    hub_dataset = HUB_DATASETS.get(data.name) if data.source == "hub" else None
    card_data = ModelCardData(
        base_model=_hub_id(cfg.model.name_or_path), datasets=[hub_dataset] if hub_dataset else None,
        license=base_license(cfg), library_name=library,
        model_name=repo.split("/")[-1], pipeline_tag="text-generation",
        tags=["rlhf", "ppo", "rlhf_app", *reward_tags(cfg)] + (["lora"] if adapter else []))
    origin = hub_dataset or ("generated by rlhf_app" if data.name == "toy" else f"data.source={data.source}")
    revision = f" (revision `{cfg.model.revision}`)" if cfg.model.revision else ""
    hparams = "\n".join(f"| `{k}` | {_cell(functools.reduce(getattr, k.split('.'), cfg))} |" for k in HPARAMS)
    last = metrics[-1] if metrics else {}
    progress = (f"{last.get('step')} PPO updates, {last.get('episode')} episodes; last update: mean score "
                f"{_cell(last.get('objective/scores'))}, KL to the base model {_cell(last.get('objective/kl'))}."
                if last else "No metrics.jsonl was recorded.")
    estimator = cfg.algorithm.advantage_estimator
    objective = ("with a learned critic" if cfg.algorithm.uses_critic else
                 f"with `{estimator}` advantages, which need no critic")
    saved = ("`value_model/` (a separate critic)" if any(n.startswith("value_model/") for n in names) else
             "`value_head.safetensors` (a linear head on the policy's last hidden state)"
             if "value_head.safetensors" in names else "no critic (none was saved)")
    critic = (f"The critic is {saved}. To get the policy with its critic (e.g. to continue PPO)"
              if cfg.algorithm.uses_critic else
              f"The run trained no critic (`{estimator}` needs none). To get the policy as `rlhf_app` holds it")
    values = "the critic's estimate per token" if cfg.algorithm.uses_critic else "None, as this run has no critic"
    plot = ("![training diagnostics: reward, KL, losses and clip fractions over updates](plots/diagnostics.png)"
            if "plots/diagnostics.png" in names else "No diagnostics plot was recorded.")
    body = f"""
# {repo.split("/")[-1]}

A causal language model fine-tuned with PPO (RLHF) by `rlhf_app`: the policy maximises the reward
below minus a KL penalty to the base model, {objective}. Weights from `{source}/` of the run.

## Base model

`{cfg.model.name_or_path}`{revision}. Licence: {card_data.license or "not recorded; check the base model's"}.

## Reward source

{reward_source(cfg)}

## Dataset

Prompts: `{data.name}` ({origin}); {data.num_eval} prompts held out for evaluation.

## Training

| hyper-parameter | value |
|---|---|
{hparams}

{progress} The full recipe is `config.yaml`; per-update metrics are in `metrics.jsonl`.

## Evaluation (before → after)

{_eval_section(evaluation)}

## Diagnostics

{plot}

## How to load

```python
from {library} import {auto}
from transformers import AutoTokenizer

model = {auto}.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
inputs = tokenizer("the movie was", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))
```

{critic}, use `rlhf_app`:

```python
from huggingface_hub import snapshot_download
from rlhf_app.models.policy import load_policy

model, tokenizer = load_policy(snapshot_download("{repo}"))
logits, values = model(input_ids, attention_mask)  # values: {values}
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")  # parses the front matter: a bad one fails here
    return str(card)

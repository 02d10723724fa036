"""Sentiment reward: a text-classification model with its own tokenizer scores each completion.

As in TRL's gpt2-sentiment notebook, the score is the raw logit of one label (e.g. POSITIVE of
`lvwerra/distilbert-imdb`), or its softmax probability with `reward.kind=prob`. A reward model trained by
`rlhf-app rm` is scored the way it trained (its config.json says): text + EOS, or, trained on conversations,
[prompt messages..., assistant completion] through its own tokenizer's chat template.
"""

from __future__ import annotations

from rlhf_app.assets.registry import resolve


def label_index(label: str, id2label: dict) -> int:
    """The class index of `label` in a model's `id2label` (exact, then case-insensitive, then an index)."""
    names = {int(i): str(n) for i, n in id2label.items()}
    for match in (lambda n: n == label, lambda n: n.lower() == str(label).lower()):
        hits = [i for i, n in names.items() if match(n)]
        if hits:
            return hits[0]
    if str(label).isdigit() and int(label) in names:
        return int(label)
    raise ValueError(f"reward.label={label!r} is not a label of the classifier: "
                     f"choose one of {', '.join(names[i] for i in sorted(names))}")


def _max_length(tokenizer, model) -> int:
    """The classifier's input limit: the tokenizer's, unless unset (a huge sentinel), else the model's."""
    limit = tokenizer.model_max_length
    if not limit or limit > 100_000:
        limit = getattr(model.config, "max_position_embeddings", None) or 512
    return int(limit)


def build(cfg, device=None):
    """Load the classifier (Hub id, folder or asset:NAME) and return the batched reward callable."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:  # registers the offline classifier's classes with the Auto classes
        import rlhf_app.models.sentiment  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != "rlhf_app.models.sentiment":
            raise
    rc = cfg.reward
    if not rc.model:
        raise ValueError("reward.name=sentiment needs reward.model=<Hub id, folder or asset:imdb-sentiment>")
    if rc.batch_size < 1:
        raise ValueError(f"reward.batch_size must be >= 1, got {rc.batch_size}")
    path = resolve(rc.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    # A one-logit model is a reward model (TRL's): its logit is the score.
    index = 0 if model.config.num_labels == 1 else label_index(rc.label, model.config.id2label)
    if tokenizer.pad_token is None:  # GPT-style classifiers ship without one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    # A classifier reads the last real token at the positions it trained with: pad on the right, as TRL's
    # RewardTrainer did (a policy's tokenizer saved with padding_side=left would shift every padded score).
    tokenizer.padding_side = "right"
    target = torch.device(rc.device or device or "cpu")
    model.to(target).eval()
    max_length = _max_length(tokenizer, model)
    # A reward model trained by `rlhf-app rm` on text pairs saw each text end in EOS (TRL's RewardTrainer
    # appends it; stages/rm.py records that in its config): score exactly as it trained, or it reads noise.
    eos = tokenizer.eos_token if getattr(model.config, "reward_append_eos", False) and tokenizer.eos_token else ""
    # Trained on conversations (stages/rm.py records it; older folders only reward_append_eos: false): PPO passes
    # it TRL's messages (rewards/combine.py), rendered as RewardTrainer tokenized its pairs.
    chat = bool(getattr(model.config, "reward_conversational",
                        getattr(model.config, "reward_append_eos", None) is False))

    def batches(prompts: list, completions: list):
        """The episodes' model inputs, batch by batch: TRL's messages through the chat template, else text."""
        if chat and prompts and isinstance(prompts[0], list):
            rows = [{"input_ids": tokenizer.apply_chat_template(p + c, tokenize=True, return_dict=True)["input_ids"]
                     [:max_length]} for p, c in zip(prompts, completions)]
            for start in range(0, len(rows), rc.batch_size):
                yield tokenizer.pad(rows[start:start + rc.batch_size], return_tensors="pt")
            return
        texts = [p + c for p, c in zip(prompts, completions)] if rc.score_prompt else list(completions)
        texts = [t if t.endswith(eos) else t + eos for t in texts]
        for start in range(0, len(texts), rc.batch_size):
            yield tokenizer(texts[start:start + rc.batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")

    def logits(prompts: list, completions: list) -> torch.Tensor:
        """Classifier logits of every episode. -> (N, num_labels) on the CPU."""
        with torch.inference_mode():
            out = [model(**batch.to(target)).logits.float().cpu() for batch in batches(prompts, completions)]
        return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)

    def sentiment_reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        scores = logits(prompts, completions)
        if rc.kind == "prob":
            scores = scores.softmax(-1)
        return scores[:, index].tolist()

    def extra_metrics(prompts: list[str], completions: list[str], **columns) -> dict:
        """positive_share: the share of texts whose most likely label is `reward.label`."""
        top = logits(prompts, completions).argmax(-1)
        return {"positive_share": (top == index).float().mean().item() if len(top) else 0.0}

    if model.config.num_labels > 1:  # a one-logit reward model has no label to share (its argmax is always 0)
        sentiment_reward.extra_metrics = extra_metrics
    sentiment_reward.conversational = chat  # rewards/__init__.py hands it TRL's messages, not text
    return sentiment_reward

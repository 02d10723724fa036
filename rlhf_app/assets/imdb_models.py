"""Builders of the IMDB offline assets: a review BPE, a sentiment classifier and a demo policy.

Every builder is `build(out: Path) -> dict` (the dict lands in `asset.json`); they train only on
the "train" split of `offline_imdb_reviews` and are deterministic given `SEED`. With
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

from rlhf_app.assets.imdb import offline_imdb_reviews

SEED = 0
EOS, PAD = "<|endoftext|>", "<pad>"  # ids 0 and 1 in every review BPE
FULL = {"bpe_reviews": 10_000, "vocab": 4096, "clf_reviews": 22_500, "clf_epochs": 2, "eval_reviews": 2500,
        "lm_max_steps": 2400, "lm_budget_s": 180.0, "lm_eval_windows": 64}
QUICK = {"bpe_reviews": 2000, "vocab": 2048, "clf_reviews": 2000, "clf_epochs": 4, "eval_reviews": 500,
         "lm_max_steps": 60, "lm_budget_s": 10.0, "lm_eval_windows": 8}


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
    # Only the first `max_length` tokens are kept, so cut the text well past them (tokens here
    # average under 4 characters) and spare the tokenizer the rest of long reviews.
    for i, enc in enumerate(core.encode_batch([t[:max_length * 8] for t in texts])):
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
    """Bag-of-embeddings IMDB classifier (see `rlhf_app.models.sentiment`) saved as a Hugging Face
    sequence-classification folder with id2label {0: NEGATIVE, 1: POSITIVE}."""
    from rlhf_app.models.sentiment import BagOfEmbeddingsConfig, BagOfEmbeddingsForSequenceClassification

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
    batch, steps, train_start = 32, b["clf_epochs"] * math.ceil(len(train) / 32), time.time()
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
    train_seconds = time.time() - train_start
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
            "train_seconds": round(train_seconds, 1), "build_seconds": round(time.time() - start, 1)}
    print(f"asset:imdb-sentiment built in {info['build_seconds']:.0f} s: held-out accuracy "
          f"{acc256:.1%} (256 tokens), {acc32:.1%} (32 tokens) on {len(heldout)} reviews")
    return info


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds so that the allocator keeps the freed activation
    buffers instead of returning them to the OS each step (LM training ran ~1.45x faster).
    Returns False where libc has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30))


def packed_windows(core, texts: list[str], seq: int, limit: int) -> torch.Tensor:
    """Reviews joined by EOS and cut into at most `limit` windows: (n, seq) token ids."""
    eos, ids = core.token_to_id(EOS), []
    for i in range(0, len(texts), 256):  # encode in chunks: stop once enough tokens exist
        for enc in core.encode_batch(texts[i:i + 256]):
            ids.extend(enc.ids)
            ids.append(eos)
        if len(ids) >= limit * seq:
            break
    n = min(limit, len(ids) // seq)
    return torch.tensor(ids[:n * seq], dtype=torch.long).view(n, seq)


def lm_loss(model, windows: torch.Tensor) -> float:
    """Mean next-token cross-entropy over (n, seq) windows."""
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=w, labels=w).loss.item() for w in windows.split(16)]
    model.train()
    return sum(losses) / len(losses)


def warmup_cosine(step: int, progress: float, warmup: int, floor: float = 0.1) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine from 1 down to `floor` as
    `progress` (0..1, the larger of steps and seconds spent over their budgets) reaches 1."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_demo_policy(out: Path) -> dict:
    """A 2-layer × 128-dim GPT-2 pretrained on train-split reviews with the review BPE
    (pad ≠ eos, left padding): fast enough for PPO on a CPU in minutes, and it writes
    review-like text. Training runs `lm_max_steps` steps, or stops at `lm_budget_s` seconds
    if that comes first (a busy machine), so `make demo` keeps its time."""
    import random

    from transformers import GPT2Config, GPT2LMHeadModel

    start, b = time.time(), budget()
    torch.manual_seed(SEED)
    malloc_tuned = tune_malloc()
    core = review_bpe(b["bpe_reviews"], b["vocab"])
    tokenizer = hf_tokenizer(core, "left", 128)
    # Batch 8 learned more per token than 16 in this short, token-starved run (held-out loss
    # 5.92 vs 6.14 after 0.6M tokens) at the same tokens/s.
    seq, batch, warmup = 128, 8, 30 if not b["quick"] else 5
    train = [r["text"] for r in offline_imdb_reviews("train")]
    random.Random(SEED).shuffle(train)  # the file is sorted by label
    data = packed_windows(core, train, seq, b["lm_max_steps"] * batch)
    data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(SEED))]
    heldout = packed_windows(core, [r["text"] for r in offline_imdb_reviews("heldout")], seq, b["lm_eval_windows"])
    eos, pad = core.token_to_id(EOS), core.token_to_id(PAD)
    config = GPT2Config(vocab_size=core.get_vocab_size(), n_positions=seq, n_embd=128, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # far too few tokens to overfit
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the default, named: unset, transformers warns about it
    model.generation_config.pad_token_id = pad
    loss_init = lm_loss(model, heldout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    max_steps = min(b["lm_max_steps"], len(data) // batch)
    train_start, step, progress = time.time(), 0, 0.0
    with tqdm(total=max_steps, desc="demo-policy: pretraining", unit="step") as bar:
        while progress < 1.0:
            for group in optimizer.param_groups:
                group["lr"] = 3e-3 * warmup_cosine(step, progress, warmup)
            x = data[step * batch:(step + 1) * batch]
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            # Whichever budget runs out first ends the schedule: the step cap on a quiet
            # machine (then the build is reproducible), the seconds on a busy one.
            progress = max(step / max_steps, (time.time() - train_start) / b["lm_budget_s"])
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.2f}", refresh=False)
        bar.total = step
    train_seconds = time.time() - train_start
    loss_final = lm_loss(model, heldout)
    model.eval()
    samples = sample_continuations(model, tokenizer, ["This movie was", "I rented this film because"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tokens = step * batch * seq
    info = {"heldout_loss": round(loss_final, 4), "heldout_perplexity": round(math.exp(loss_final), 1),
            "heldout_loss_init": round(loss_init, 4), "heldout_tokens": heldout.numel(),
            "steps": step, "max_steps": max_steps, "budget_seconds": b["lm_budget_s"],
            "stopped_by": "steps" if step >= max_steps else "time",
            "tokens_trained": tokens, "tokens_per_s": round(tokens / train_seconds),
            "train_seconds": round(train_seconds, 1), "malloc_tuned": malloc_tuned,
            "params": sum(p.numel() for p in model.parameters()), "vocab": core.get_vocab_size(),
            "samples": samples, "quick": b["quick"], "build_seconds": round(time.time() - start, 1)}
    for text in samples:
        print(f"  sample: {text!r}")
    print(f"asset:demo-policy built in {info['build_seconds']:.0f} s: held-out loss {loss_init:.2f} -> "
          f"{loss_final:.2f} (perplexity {info['heldout_perplexity']}), {step} steps, "
          f"{info['tokens_per_s']} tokens/s")
    return info


def sample_continuations(model, tokenizer, prompts: list[str], new_tokens: int = 40) -> list[str]:
    """Seeded sampled continuations of `prompts`, batched with left padding."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, top_k=50, max_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out, skip_special_tokens=True)

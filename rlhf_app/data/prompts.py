"""Prompt datasets. `load_prompts(cfg, tokenizer)` returns (train, eval) `datasets.Dataset`s whose
rows hold `prompt` (the text the policy sees), `input_ids` (its tokens) and the dataset's answer
columns, which reach the reward function by name. The eval split never overlaps training.

- toy: short random word strings (tests, the `tiny` recipe).
- imdb: the start of a movie review, 2-8 policy tokens, to be continued (TRL's gpt2-sentiment
  notebook). Hub: `stanfordnlp/imdb` train / test; offline: the shipped IMDB train split, whose
  held-out rows (never used to train an offline asset) give the eval prompts.
- gsm8k: a grade-school math problem; the `answer` column holds the reference. Hub:
  `openai/gsm8k` train / test; offline: see `rlhf_app.assets.gsm8k`.
- anything else: a Hub dataset id or a local file / folder (`rlhf_app.data.files`).
"""

from __future__ import annotations

import random

from datasets import Dataset, load_dataset

from rlhf_app.assets.gsm8k import GSM8K_INSTRUCTION, gsm8k_user_turn
from rlhf_app.data import DataError
from rlhf_app.data.columns import CONVERSATION_COLUMN

IMDB_HUB = "stanfordnlp/imdb"
GSM8K_HUB = ("openai/gsm8k", "main")
MIN_REVIEW_CHARS = 200  # the notebook keeps reviews longer than this
# verl's GSM8K prompt asks for the answer after "####", which the strict checker reads.

TOY_WORDS = ("the movie was a story about an actor who said that this film is not bad and it "
             "had some good parts but i think you will like what they did with the ending").split()


def toy_prompts(n: int, seed: int) -> list[str]:
    """Short prompts of 2-5 common words, deterministic in `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(TOY_WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n)]


def _tokenize(rows: list[dict], tokenizer, max_len: int) -> Dataset:
    ds = Dataset.from_list(rows)
    return ds.map(lambda r: {"input_ids": tokenizer(r["prompt"], add_special_tokens=False)
                             ["input_ids"][-max_len:]})


def sample(rows: list, n: int | None, seed: int, what: str) -> list:
    """`n` rows in a seeded random order (all of them when n is None); too few is a DataError."""
    if n is not None and n > len(rows):
        raise DataError(f"{what}: {n} asked for but only {len(rows)} available: lower it to {len(rows)} or less")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


# ---------------------------------------------------------------- IMDB

def clean_review(text: str) -> str:
    return text.replace("<br />", " ")


def imdb_reviews(source: str, split: str) -> list[dict]:
    """IMDB reviews longer than MIN_REVIEW_CHARS, `<br />` removed: {"text", "label", "row"}.

    split "train" is the training pool; "eval" is the Hub test split, or offline the held-out rows.
    """
    if source == "offline":
        from rlhf_app.assets.imdb import offline_imdb_reviews

        rows = offline_imdb_reviews("train" if split == "train" else "heldout")
    else:
        ds = load_dataset(IMDB_HUB, split="train" if split == "train" else "test")
        rows = [{"text": t, "label": y, "row": i} for i, (t, y) in enumerate(zip(ds["text"], ds["label"]))]
    cleaned = ({**r, "text": clean_review(r["text"])} for r in rows)
    return [r for r in cleaned if len(r["text"]) > MIN_REVIEW_CHARS]


def _word_prefix(text: str, chars: int) -> str:
    """At most `chars` characters of `text`, cut at a space so every kept word is whole (and
    so tokenizes exactly as in the full text)."""
    if len(text) <= chars:
        return text
    cut = text.rfind(" ", 0, chars)
    return text[:cut] if cut > 0 else text


def truncated_prompts(texts: list[str], tokenizer, min_tokens: int, max_tokens: int, seed: int) -> list[dict]:
    """Each text cut to a length drawn uniformly in [min_tokens, max_tokens] policy tokens (TRL's
    LengthSampler), deterministic in `seed`: [{"prompt", "input_ids"}]."""
    rng = random.Random(seed)
    lengths = [rng.randint(min_tokens, max_tokens) for _ in texts]
    # Tokenize a word prefix of ~12 characters per wanted token (a review is ~1,300 characters);
    # the rare text whose prefix falls short is tokenized whole.
    ids = tokenizer([_word_prefix(t, 12 * max_tokens) for t in texts], add_special_tokens=False)["input_ids"]
    rows = []
    for text, n, row_ids in zip(texts, lengths, ids):
        if len(row_ids) < n:
            row_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = row_ids[:n]
        rows.append({"prompt": tokenizer.decode(keep), "input_ids": keep})
    return rows


def imdb_rows(cfg, tokenizer) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    train = sample(imdb_reviews(d.source, "train"), d.num_train, cfg.seed, "data.num_train (imdb)")
    evals = sample(imdb_reviews(d.source, "eval"), d.num_eval, cfg.seed + 1, "data.num_eval (imdb)")
    return (truncated_prompts([r["text"] for r in train], tokenizer, d.prompt_min_tokens, d.prompt_max_tokens, cfg.seed),
            truncated_prompts([r["text"] for r in evals], tokenizer, d.prompt_min_tokens, d.prompt_max_tokens,
                              cfg.seed + 1))


# ---------------------------------------------------------------- GSM8K

def gsm8k_prompt(question: str, tokenizer, use_chat_template: bool = True) -> str:
    """A user turn in the tokenizer's chat template when it has one, else "Question: ...\\nAnswer:"."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([gsm8k_user_turn(question)],
                                             tokenize=False, add_generation_prompt=True)
    return f"Question: {question} {GSM8K_INSTRUCTION}\nAnswer:"


def gsm8k_problems(cfg) -> tuple[list[dict], list[dict]]:
    """(train, eval) problems {"question", "answer"} from the Hub or the offline sources."""
    d = cfg.data
    if d.source == "offline":
        from rlhf_app.assets import gsm8k as gsm8k_offline

        return (gsm8k_offline.train_problems(d.num_train or gsm8k_offline.GSM8K_TRAIN_SIZE, cfg.seed),
                sample(gsm8k_offline.eval_problems(), d.num_eval, cfg.seed + 1, "data.num_eval (gsm8k offline)"))
    ds = load_dataset(*GSM8K_HUB)
    keep = ("question", "answer")
    train = [{k: r[k] for k in keep} for r in ds["train"]]
    evals = [{k: r[k] for k in keep} for r in ds["test"]]
    return (sample(train, d.num_train, cfg.seed, "data.num_train (gsm8k)"),
            sample(evals, d.num_eval, cfg.seed + 1, "data.num_eval (gsm8k)"))


def gsm8k_rows(problems: list[dict], tokenizer, cfg, what: str) -> list[dict]:
    """Prompt rows with the `answer` column; prompts over data.max_prompt_length are dropped, as
    verl's filter_overlong_prompts does (cutting a chat prompt would lose its header)."""
    prompts = [gsm8k_prompt(p["question"], tokenizer, cfg.data.use_chat_template) for p in problems]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [{"prompt": p, "input_ids": i, "answer": str(q["answer"])}
            for p, i, q in zip(prompts, ids, problems) if len(i) <= cfg.data.max_prompt_length]
    if cfg.rollout.uses_tools and cfg.data.use_chat_template and getattr(tokenizer, "chat_template", None):
        # Tool episodes render the user turn again, with the tools: keep it as a conversation (TRL's prompt).
        turns = {p: [gsm8k_user_turn(q["question"])] for p, q in zip(prompts, problems)}
        rows = [{**r, CONVERSATION_COLUMN: turns[r["prompt"]]} for r in rows]
    if problems and not rows:
        raise DataError(f"every {what} prompt is longer than data.max_prompt_length="
                         f"{cfg.data.max_prompt_length} tokens: raise it")
    return rows


# ---------------------------------------------------------------- entry point

def load_prompts(cfg, tokenizer) -> tuple[Dataset, Dataset]:
    name = cfg.data.name
    if name == "toy":
        train = [{"prompt": p} for p in toy_prompts(cfg.data.num_train or 512, cfg.seed)]
        evals = [{"prompt": p} for p in toy_prompts(cfg.data.num_eval, cfg.seed + 10_000)]
        return (_tokenize(train, tokenizer, cfg.data.max_prompt_length),
                _tokenize(evals, tokenizer, cfg.data.max_prompt_length))
    if name == "imdb":
        train, evals = imdb_rows(cfg, tokenizer)
    elif name == "gsm8k":
        train_problems, eval_problems = gsm8k_problems(cfg)
        train = gsm8k_rows(train_problems, tokenizer, cfg, "training")
        evals = gsm8k_rows(eval_problems, tokenizer, cfg, "eval")
    else:
        from rlhf_app.data import files

        return files.load(cfg, tokenizer)
    return Dataset.from_list(train), Dataset.from_list(evals)

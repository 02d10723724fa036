"""Offline assets: models built here from files that PyPI packages ship, cached per user.

`resolve("asset:NAME")` returns a local folder that `from_pretrained` loads, building it on
first use. A build writes into a temporary folder and renames it into place, so an interrupted
build never leaves a half-written asset behind. Any other name (a Hub id, a folder) passes
through unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_app.assets.paths import cache_dir
from rlhf_app.extras import MissingExtra
from rlhf_app.run_dir.atomic import building

PREFIX = "asset:"


def build_tiny(out: Path) -> dict:
    """A randomly initialised 2-layer GPT-2 (64 dims) on a 35-symbol character tokenizer.

    Small enough that PPO moves it within a minute of CPU: the model of the tests and the
    `tiny` recipe. Deterministic: the same seed always gives the same weights.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for char in " abcdefghijklmnopqrstuvwxyz.,!?'":
        vocab[char] = len(vocab)
    # BPE without merges splits text into single characters; Fuse joins them back on decode.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left")
    return _save_tiny_gpt2(out, tokenizer, len(vocab), n_positions=256, bos=1, eos=1)


def _save_tiny_gpt2(out: Path, tokenizer, vocab_size: int, n_positions: int, bos: int, eos: int) -> dict:
    """The tiny models' shape (2 layers, 64 dims, pad 0), initialised from seed 0, saved with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=bos, eos_token_id=eos, pad_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": vocab_size}


def build_tiny_chat(out: Path) -> dict:
    """The tiny model's shape on every printable ASCII character, `<|im_start|>` and `<|im_end|>` (EOS), with
    the ChatML tool-calling template (asset:chatml-tools): the tests' model for chats, tools and the SFT stage."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from rlhf_app.assets import chat_templates

    special = ["<pad>", "<|im_end|>", "<unk>", "<|im_start|>"]
    vocab = {token: i for i, token in enumerate(special + [chr(c) for c in range(32, 127)] + ["\n"])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.add_special_tokens(special)
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>", unk_token="<unk>", padding_side="left")
    chat_templates.apply(tokenizer, "asset:chatml-tools")
    return _save_tiny_gpt2(out, tokenizer, len(vocab), n_positions=1024, bos=3, eos=1)


# The other builders import torch and train: imported on first call.
def build_imdb_sentiment(out: Path) -> dict:
    from rlhf_app.assets.imdb_models import build_imdb_sentiment

    return build_imdb_sentiment(out)


def build_demo_policy(out: Path) -> dict:
    from rlhf_app.assets.imdb_models import build_demo_policy

    return build_demo_policy(out)


def build_smollm2(out: Path) -> dict:
    from rlhf_app.assets.smollm2 import build_smollm2

    return build_smollm2(out)


def build_tiny_tools(out: Path) -> dict:
    """asset:tiny with a chat template that calls tools in its alphabet (assets/tiny_tools.py)."""
    from rlhf_app.assets.tiny_tools import add_tool_templates

    info = build_tiny(out)
    add_tool_templates(out)
    return info


def build_gsm8k_sft(out: Path) -> dict:
    from rlhf_app.assets.gsm8k import build_sft

    return build_sft(out)


def build_gsm8k_tools_sft(out: Path) -> dict:
    from rlhf_app.assets.gsm8k_tools import build_tools_sft

    return build_tools_sft(out)


# name -> builder(out_dir) -> info dict stored as asset.json beside the files.
BUILDERS = {
    "tiny": build_tiny,
    "tiny-tools": build_tiny_tools,
    "tiny-chat": build_tiny_chat,  # the tiny model on ASCII with ChatML and tool calls (tests)
    "imdb-sentiment": build_imdb_sentiment,
    "demo-policy": build_demo_policy,
    "smollm2-135m-instruct": build_smollm2,
    "gsm8k-sft": build_gsm8k_sft,  # a dataset: the GSM8K pipeline's supervised set (a train.jsonl)
    "gsm8k-tools-sft": build_gsm8k_tools_sft,  # the same problems, each arithmetic step a calculator call
}
# Rough first-build time on a 2-core CPU, shown before a build starts.
BUILD_TIME = {"tiny": "~1 s", "tiny-tools": "~1 s", "tiny-chat": "~1 s", "imdb-sentiment": "~1 min",
              "demo-policy": "~4 min", "smollm2-135m-instruct": "~1 min", "gsm8k-sft": "~5 s", "gsm8k-tools-sft": "~10 s"}


def resolve(name_or_path: str) -> str:
    """`asset:NAME` -> its cached folder (built on first use); anything else unchanged."""
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX):]
    if name not in BUILDERS:
        raise ValueError(f"unknown asset {name!r}: available are {', '.join(f'asset:{n}' for n in BUILDERS)}")
    target = cache_dir() / name
    if (target / "asset.json").is_file():
        return str(target)
    _build(name, target, replace=False)  # a build another process finished first wins
    return str(target)


def _build(name: str, target: Path, replace: bool) -> None:
    """Run the builder into a hidden folder that becomes `target` (with its asset.json) only when done."""
    print(f"building asset:{name} (first use, {BUILD_TIME.get(name, 'a few minutes')})…", flush=True)
    with building(target, replace=replace) as tmp:
        info = BUILDERS[name](tmp)
        (tmp / "asset.json").write_text(json.dumps({"name": name, **info}, indent=2))


# Figures `list` shows, in this order, when an asset.json holds them.
LISTED = ("rows", "calls_per_row", "heldout_accuracy", "heldout_accuracy_32_tokens", "heldout_loss", "heldout_perplexity",
          "tokens_per_s", "steps", "params", "build_seconds", "quick")


def rebuild(name: str) -> str:
    """Build `name` afresh; the old copy stays in place until the new one is ready."""
    target = cache_dir() / name
    _build(name, target, replace=True)
    return str(target)


def main(argv: list[str]) -> int:
    """`build [--force] NAME… | all` and `list`: the command-line face of the asset cache."""
    usage = "usage: python -m rlhf_app.assets.registry build [--force] NAME [NAME…] | all; python -m rlhf_app.assets.registry list"
    if not argv or argv[0] not in ("build", "list"):
        raise SystemExit(usage)
    if argv[0] == "list":
        for name in BUILDERS:
            info_file = cache_dir() / name / "asset.json"
            if not info_file.is_file():
                print(f"asset:{name}: not built ({BUILD_TIME.get(name, '?')} to build)")
                continue
            info = json.loads(info_file.read_text())
            figures = ", ".join(f"{k}={info[k]}" for k in LISTED if k in info)
            print(f"asset:{name}: {info_file.parent}  {figures}")
        return 0
    force = "--force" in argv[1:]
    names = [n.removeprefix(PREFIX) for n in argv[1:] if n != "--force"]
    names = list(BUILDERS) if names == ["all"] else names
    if not names:
        raise SystemExit(usage)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise SystemExit(f"error: unknown asset {unknown[0]!r}: available are {', '.join(BUILDERS)} (or all)")
    for name in names:
        cached = (cache_dir() / name / "asset.json").is_file()
        try:
            path = rebuild(name) if force else resolve(PREFIX + name)
        except MissingExtra as err:
            raise SystemExit(f"error: {err}") from None
        print(f"asset:{name}: {'already built' if cached and not force else 'built'} at {path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))

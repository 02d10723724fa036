"""A tiny model that calls tools (the tests of tool episodes): asset:tiny-tools taught, in a few seconds of
supervised steps, three conversations by heart, each ending its turns with <eos>:

- "say the word": call lookup key is fruit! -> the result -> "banana"
- "say it wrong": call lookup key!  (no value: the call lacks its argument)
- "ask nobody":   call nobody key is fruit!  (no such tool)

TOOLS holds `lookup` variants (each file defines the one name the model calls)."""

from __future__ import annotations

from pathlib import Path

RIGHT, WRONG, NOBODY = "say the word", "say it wrong", "ask nobody"
SCRIPT = {
    RIGHT: ["call lookup key is fruit!", "banana"],
    WRONG: ["call lookup key!", "oops"],
    NOBODY: ["call nobody key is fruit!", "oops"],
}
RESULT = "banana"  # what the good lookup returns for "fruit"

DOC = '''"""Look a word up.

    Args:
        key: the word to look up
    """'''
TOOLS = {
    "good": f'def lookup(key: str) -> str:\n    {DOC}\n    return {{"fruit": "banana"}}[key]\n',
    "raising": f'def lookup(key: str) -> str:\n    {DOC}\n    raise ValueError("no such word")\n',
    # waits on an event nobody sets: only the timeout ends the call
    "hanging": f'import threading\n\ndef lookup(key: str) -> str:\n    {DOC}\n    threading.Event().wait()\n',
    "untyped": 'def lookup(key):\n    return key\n',
}


def write_tools(folder: Path, kind: str) -> str:
    """TOOLS[kind] as folder/<kind>_tools.py -> its `file.py:lookup` spec."""
    path = folder / f"{kind}_tools.py"
    path.write_text(TOOLS[kind])
    return f"{path}:lookup"


def episode_text(prompt: str, tool_result: str = RESULT) -> str:
    """The full rendered conversation the model learns for `prompt` (the tiny template's form)."""
    call, answer = SCRIPT[prompt]
    return f"tools lookup. q {prompt}. a {call}<eos> r {tool_result}. a {answer}<eos>"


def train_tool_model(out: Path, steps: int = 400) -> Path:
    """asset:tiny-tools trained on SCRIPT's conversations (loss on every token), saved in `out` with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_app.assets.registry import resolve

    path = resolve("asset:tiny-tools")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    texts = [episode_text(p, RESULT if p == RIGHT else "{'error': 'x'}") for p in SCRIPT]
    tokenizer.padding_side = "right"  # positions from 0 in every row, as generation sees them
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    tokenizer.padding_side = "left"
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

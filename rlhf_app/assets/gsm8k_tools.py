"""`asset:gsm8k-tools-sft`: the GSM8K supervised set with every arithmetic step a calculator call.

The same generated problems as `asset:gsm8k-sft` (reasoning-gym `gsm_symbolic`, training templates only,
SFT_SEED: never an evaluation problem or its seed). In each worked solution (`answer_cot`) a step such as
`Ben has 8*0.5=4 tubes` becomes an assistant turn that stops at a tool call, a tool turn with the
calculator's answer, and an assistant turn that goes on from it:

    assistant: "Ben has"  + tool call calculator(expression="8*0.5")
    tool:      "4"
    assistant: "4 tubes of blue paint\n..."  ... "#### 13"

A step is `expression = result` where the expression holds numbers, + - * / x ×, parentheses, currency
signs and a unit word after a number ("1045 puppies + 475 puppies = 1520"); `2(10)` is `2*(10)`. A row
is kept only if the calculator gives each written result (to 1e-6), no arithmetic is left in the prose
(a percent step, say), and the final `#### N` is the problem's answer; it ends with that answer as an
integer. Rows are TRL's conversational prompt-completion with a `tools` column (JSON schemas, as text):
train them with `sft.assistant_only_loss=true` so the loss skips the tool turns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rlhf_app.assets.gsm8k import SFT_SEED, SFT_SIZE, gsm8k_user_turn, train_problems
from rlhf_app.tools.calculator import calculator

TOOL_NAME = "calculator"
_TOKEN = re.compile(r"(?P<num>\d+(?:,\d{3})*(?:\.\d+)?)|(?P<cur>[$€£])|(?P<op>[-+*/×÷]|(?<=\s)x(?=\s))"
                    r"|(?P<lpar>\()|(?P<rpar>\))|(?P<eq>=)|(?P<word>[A-Za-z]+)|(?P<space>[ \t]+)|(?P<other>.)",
                    re.DOTALL)
# An '=' left in the prose with arithmetic before it on its line ("100% - 60% = 40%"): a step not made a call.
_PROSE_STEP = re.compile(r"\d%?\s*(?:[-+*/×÷]|\sx\s)\s*[$€£]?\(?\d[^=\n]*=")
_GARBAGE = re.compile(r"\d\.\d{7,}")  # 22.249999999999996: float noise in a written number
_FINAL = re.compile(r"\n?####\s*(\S+)\s*$")
MAX_UNIT_WORDS = 3  # "102 plants × €7 per plant = €714"


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    return [(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _unit_start(toks: list, j: int) -> int | None:
    """If toks[j] ends a run of at most MAX_UNIT_WORDS words that follows a number and a space ("475 puppies",
    "7 per plant"), the index of that number; else None."""
    words = 0
    while j >= 1 and toks[j][0] == "word" and toks[j - 1][0] == "space" and words < MAX_UNIT_WORDS:
        words, j = words + 1, j - 2
        if toks[j][0] == "num":
            return j
    return None


def _expression_before(toks: list, eq: int) -> list:
    """The tokens of the arithmetic that ends just before the '=' at toks[eq] (maybe empty): numbers,
    operators, parentheses and currency signs, units after a number skipped."""
    kept, j = [], eq - 1
    while j >= 0:
        kind = toks[j][0]
        if kind in ("num", "op", "lpar", "rpar", "cur", "space"):
            kept.append(toks[j])
            j -= 1
            continue
        right = next((t[0] for t in reversed(kept) if t[0] != "space"), "eq")
        number = _unit_start(toks, j) if kind == "word" and right in ("op", "eq", "rpar") else None
        if number is None:
            break
        j = number
    kept.reverse()
    while kept and kept[0][0] in ("op", "rpar", "space"):
        kept.pop(0)
    return kept


def _expression_text(kept: list) -> str | None:
    """Calculator syntax for the kept tokens, or None when they are not a calculation of two numbers or more."""
    parts, prev = [], None
    for kind, text, _, _ in kept:
        if kind in ("space", "cur"):
            continue
        if kind in ("lpar", "num") and prev in ("num", "rpar"):
            parts.append("*")  # 2(10), (3)4
        parts.append({"×": "*", "x": "*", "÷": "/"}.get(text, text.replace(",", "")))
        prev = kind
    numbers = sum(k[0] == "num" for k in kept)
    ops = sum(k[0] == "op" for k in kept)
    expression = "".join(parts)
    if numbers < 2 or ops < 1 or expression.count("(") != expression.count(")"):
        return None
    return expression


def _result_after(toks: list, eq: int) -> tuple[str, int, int, int] | None:
    """(the written result, where the text after the '=' starts, the result's start and end): a number,
    maybe after a currency sign; not a percent, a fraction or a product."""
    j = eq + 1
    while j < len(toks) and toks[j][0] == "space":
        j += 1
    after = toks[j][2] if j < len(toks) else None
    if j < len(toks) and toks[j][0] == "cur":
        j += 1
    if j >= len(toks) or toks[j][0] != "num":
        return None
    if j + 1 < len(toks) and toks[j + 1][1] in ("%", "/", "(") or \
            j + 2 < len(toks) and toks[j + 1][1] == "." and toks[j + 2][0] == "num":  # 40%, 2/5, 7(...)
        return None
    return toks[j][1].replace(",", ""), after, toks[j][2], toks[j][3]


def _same(a: str, b: str) -> bool:
    x, y = float(a), float(b)
    return abs(x - y) <= 1e-6 * max(1.0, abs(y))


def tool_call(expression: str) -> dict:
    return {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"expression": expression}}}


def _next_step(body: str, start: int) -> tuple[list, str, tuple] | None:
    """The first step of `body` whose '=' lies after `start`: (expression tokens, expression, written result)."""
    toks = _tokens(body)
    for eq, (kind, _, at, _) in enumerate(toks):
        if kind == "eq" and at >= start:
            kept, written = _expression_before(toks, eq), _result_after(toks, eq)
            expression = _expression_text(kept) if written else None
            if expression is not None:
                return kept, expression, written
    return None


def to_tool_turns(solution: str, answer: str) -> list[dict] | None:
    """The completion turns of one worked solution with its steps as calculator calls, or None when the row
    must go (a step the calculator does not reproduce, arithmetic left in the prose, a wrong final answer)."""
    final = _FINAL.search(solution)
    if not final or not _same(final.group(1).replace(",", ""), answer) or _GARBAGE.search(solution):
        return None
    body, start, turns = solution[:final.start()], 0, []
    while (step := _next_step(body, start)) is not None:
        kept, expression, (written, after, begin, end) = step
        prose = body[start:kept[0][2]]
        if kept[0][2] < start or _PROSE_STEP.search(prose):
            return None  # the expression reuses the last result (a = b + 1 = c), or a step stays in prose
        try:
            value = calculator(expression)
        except ValueError:
            return None
        if not _same(value, written):
            return None
        turns += [{"role": "assistant", "content": prose.rstrip(), "tool_calls": [tool_call(expression)]},
                  {"role": "tool", "name": TOOL_NAME, "content": value}]
        # The next turn starts from the result ("€27 ..."), the calculator's figure in place of the written one.
        body, start = body[:begin] + value + body[end:], after
    rest = body[start:]
    if not turns or _PROSE_STEP.search(rest):
        return None
    answer = str(int(float(answer))) if float(answer).is_integer() else answer
    return turns + [{"role": "assistant", "content": f"{rest.strip()}\n#### {answer}".lstrip()}]


def tool_schemas() -> list[dict]:
    """The `tools` of every row: the calculator's JSON schema, as transformers renders a function."""
    from transformers.utils import get_json_schema

    return [get_json_schema(calculator)]


def build_tools_sft(out: Path, n: int = SFT_SIZE, seed: int = SFT_SEED) -> dict:
    """The rows of `asset:gsm8k-tools-sft` in `out/train.jsonl`: the `n` problems of asset:gsm8k-sft (same
    seed) whose solutions convert, as {"prompt": [user], "completion": [turns], "tools": JSON text}."""
    problems = train_problems(n, seed)
    tools = json.dumps(tool_schemas())
    rows = []
    for p in problems:
        turns = to_tool_turns(p["answer_cot"], p["answer"])
        if turns is not None:
            rows.append({"prompt": [gsm8k_user_turn(p["question"])], "completion": turns, "tools": tools})
    with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    calls = sum(m["role"] == "tool" for r in rows for m in r["completion"])
    return {"rows": len(rows), "problems": n, "seed": seed, "calls_per_row": round(calls / max(len(rows), 1), 2),
            "source": "reasoning-gym gsm_symbolic answer_cot, training templates, each step a calculator call"}

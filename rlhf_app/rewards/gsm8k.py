"""GSM8K answer checker, after verl's `verl/utils/reward_score/gsm8k.py`, and its reward builder.

`compute_score` is pure: it extracts the final number of a completion, either after `####`
(strict) or the last number in the text (flexible), and compares it with the ground truth as a
number, so "3.50" equals "3.5", "$1,000" equals "1000" and "15%" equals "15".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

# A number as written in answers: thousands separators, decimals, an optional $ and sign. The
# look-behind keeps "x2", the "5" of "3.5" and the "-4" of "3-4" from being read as numbers.
NUMBER = r"(?<![\w.])[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|(?<![\w.])[-−]?\.\d+"
_STRICT = re.compile(r"####\s*(" + NUMBER + ")")
_ANY = re.compile(NUMBER)
_ENDS = re.compile(r"\.?\s*")  # what may follow an answer that ends its solution: a full stop, blank space


def to_number(text: str) -> Decimal | None:
    """'$1,000.50' -> Decimal('1000.50'); None when `text` is not a number."""
    cleaned = text.replace("$", "").replace(",", "").replace("−", "-").replace(" ", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def extract_answer(solution_str: str, method: str = "strict", multiple_answers: str = "last",
                   at_end: bool = False) -> Decimal | None:
    """The final answer of a solution: after the last `####` (strict) or its last number (flexible).

    multiple_answers="none": a solution with several `#### N` (strict) has no answer, so a policy
    cannot earn the format, or hit the answer by chance, by listing "#### 1\n#### 2 ..."; "last": veRL's
    rule, the last one counts. at_end (strict): the `#### N` must end the solution, as the prompt asks
    (only a full stop and blank space after it); "#### 24\nThe answer is 24" then has no answer."""
    if method == "strict":
        matches = list(_STRICT.finditer(solution_str))
        if multiple_answers == "none" and len(matches) > 1:
            return None
        if at_end and matches and not _ENDS.fullmatch(solution_str, matches[-1].end()):
            return None
        found = [m.group(1) for m in matches]
    elif method == "flexible":
        found = _ANY.findall(solution_str)
    else:
        raise ValueError(f"unknown GSM8K extraction method {method!r}: choose strict or flexible")
    return to_number(found[-1]) if found else None


def ground_truth_number(ground_truth) -> Decimal:
    """The reference answer from a GSM8K solution ending `#### N`, or from a bare number."""
    if isinstance(ground_truth, (int, float, Decimal)):
        return Decimal(str(ground_truth))
    text = str(ground_truth)
    value = extract_answer(text, "strict") if "####" in text else to_number(text.strip().rstrip("."))
    if value is None:
        raise ValueError(f"ground truth {text[-80:]!r} holds no number: the `answer` column must be a "
                         "GSM8K solution ending '#### N' or a bare number")
    return value


def compute_score(solution_str: str, ground_truth, method: str = "strict", format_score: float = 0.0,
                  score: float = 1.0, multiple_answers: str = "last", at_end: bool = False,
                  trailing_score: float = 0.0) -> float:
    """`score` when the extracted answer equals the ground truth, `format_score` when an answer
    was found but is wrong, 0 when none was found (see extract_answer for `multiple_answers`, `at_end`).
    With `at_end`, a well-formed answer that more text follows earns `trailing_score`: partial credit
    that keeps a signal while few completions end with their answer."""
    answer = extract_answer(solution_str, method, multiple_answers, at_end)
    if answer is None:
        trailing = at_end and trailing_score and extract_answer(solution_str, method, multiple_answers) is not None
        return trailing_score if trailing else 0.0
    return score if answer == ground_truth_number(ground_truth) else format_score


def trailing_credit(trailing_score: float, until: float = 1.0, trainer_state=None) -> float:
    """The partial credit of a trailing answer at this point of training: `trailing_score` while the update
    (`trainer_state.global_step`, counted from 0) is within the first `until` share of `max_steps`, 0 after.
    With until 0.5 over 30 updates, updates 1-15 pay it; an `eval_steps` evaluation after update k gets
    global_step k and pays it as update k + 1 would (those after updates 10 and 20: paid, unpaid). Without a
    state (no trainer_state, or no max_steps: the evaluations before and after training, `rlhf-app eval`) it is
    paid. The credit gets a sparse format started; stopping it leaves the answers that only hold a `#### N` no
    better than none."""
    max_steps = getattr(trainer_state, "max_steps", 0) or 0
    if until >= 1.0 or max_steps <= 0:
        return trailing_score
    return trailing_score if trainer_state.global_step < until * max_steps else 0.0


def accuracy_metrics(completions: list[str], answers: list, method: str = "strict",
                     multiple_answers: str = "last", at_end: bool = False) -> dict[str, float]:
    """The GSM8K figures every report uses (training's evaluation, `rlhf-app eval`, the metric module,
    the learning benchmark), so that the same completions get the same numbers everywhere:

    accuracy (with `method`), accuracy_strict, accuracy_flexible, format_share (completions holding
    a well-formed `#### N`, right or wrong) and format_end_share (those whose `#### N` ends them, as
    the prompt asks, whatever `at_end` is).
    """
    if len(answers) != len(completions):
        raise ValueError(f"{len(answers)} answers for {len(completions)} completions")
    n = max(len(completions), 1)
    hits = {m: sum(compute_score(c, a, m, 0.0, 1.0, multiple_answers, at_end) for c, a in zip(completions, answers)) / n
            for m in ("strict", "flexible")}
    formatted, ending = (sum(extract_answer(c, "strict", multiple_answers, end) is not None for c in completions) / n
                         for end in (at_end, True))
    return {"accuracy": hits[method], "accuracy_strict": hits["strict"], "accuracy_flexible": hits["flexible"],
            "format_share": formatted, "format_end_share": ending}


def build(cfg, device=None):
    """The GSM8K reward over the dataset's `answer` column, with an `accuracy` extra metric."""
    method, score, format_score = cfg.reward.method, cfg.reward.score, cfg.reward.format_score
    multiple, at_end, trailing = cfg.reward.multiple_answers, cfg.reward.answer_at_end, cfg.reward.trailing_answer_score
    until = cfg.reward.trailing_answer_until

    def answers_of(completions, answer):
        if answer is None:
            raise ValueError("the gsm8k reward needs an `answer` column: use data.name=gsm8k "
                             "or a dataset with one")
        if len(answer) != len(completions):
            raise ValueError(f"{len(answer)} answers for {len(completions)} completions")
        return answer

    def gsm8k_reward(prompts: list[str], completions: list[str], answer=None, trainer_state=None,
                     **columns) -> list[float]:
        credit = trailing_credit(trailing, until, trainer_state)
        return [compute_score(c, a, method, format_score, score, multiple, at_end, credit)
                for c, a in zip(completions, answers_of(completions, answer))]

    def extra_metrics(prompts: list[str], completions: list[str], answer=None, **columns) -> dict:
        return accuracy_metrics(completions, answers_of(completions, answer), method, multiple, at_end)

    gsm8k_reward.extra_metrics = extra_metrics
    return gsm8k_reward


METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "gsm8k_accuracy"


def load_gsm8k_metric():
    """The project's `evaluate` metric (accuracy with `compute_score`), loaded from its local folder."""
    import evaluate

    return evaluate.load(str(METRIC_DIR))

"""Variety across prompts: a reward against one stock phrase on every prompt.

A policy tuned on a classifier's score tends to one phrase that the classifier likes and writes it
after every prompt; the distinct-word share (`rlhf_app.text_stats`) falls. This reward scores each
completion by the share of its words that no completion of *another* prompt in the same batch
uses, minus 1, so in [-1, 0]: a completion written only in words its own prompt's completions use
scores 0, the stock phrase used on every prompt -1. Words are counted as the distinct-word share
counts them (`rlhf_app.text_stats.words`), distinct words over all words, so repeating a word costs too.

Completions of the same prompt (a GRPO group) do not count against each other: the group's
advantage compares them with one another, and the prompt's own topic is theirs to share. It needs
the batch: the rollout scores an update's episodes in one call (TRL's reward contract), so "another
prompt" means the other prompts of the update. Weigh it beside the task's reward with
`reward.funcs=[sentiment,variety] reward.weights=[1,1]`; it counts in the sum before
`ppo.reward_clip`. Its rise can be salad as well as varied praise: watch `eval/ref_nll`.
"""

from __future__ import annotations

from collections import defaultdict

from rlhf_app.text_stats import words as split_words


def variety_scores(prompts: list, completions: list) -> list[float]:
    """Per completion: (distinct words that no other prompt's completion uses) / (its words) - 1.

    prompts, completions: (B,) texts, a prompt repeated for each of its completions -> (B,) in [-1, 0];
    a completion without words scores -1. Example: prompts [p, p, q], completions ["great film",
    "a great cast", "great cast"]: "great" and "cast" are q's too, so -0.5, -2/3 and -1.
    """
    words = [split_words(c) for c in completions]
    users = defaultdict(set)  # word -> the prompts whose completions use it
    for prompt, ws in zip(prompts, words):
        for w in ws:
            users[w].add(str(prompt))
    scores = []
    for prompt, ws in zip(prompts, words):
        own = {w for w in ws if users[w] == {str(prompt)}}
        scores.append(len(own) / len(ws) - 1.0 if ws else -1.0)
    return scores


def build(cfg, device=None):
    """The variety reward; it has no settings (its weight is the entry of reward.weights)."""

    def variety(prompts: list, completions: list, **columns) -> list[float]:
        return variety_scores(prompts, completions)

    return variety

"""Reward functions for recipes/custom.yaml, written as for TRL's GRPOTrainer: keyword arguments,
dataset columns by name (`keyword` here), `**kwargs` for the rest."""


def mentions_keyword(completions, keyword, **kwargs):
    """1.0 when the answer names the expected word (the dataset's `keyword` column), else 0.0.

    The prompts are conversations, so each completion is [{"role": "assistant", "content": ...}].
    """
    return [float(k.lower() in c[0]["content"].lower()) for c, k in zip(completions, keyword)]

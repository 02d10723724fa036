"""Sampling exactly the distribution PPO's log-probs describe: softmax(logits / temperature).

transformers fills every generation field a `GenerationConfig` leaves unset (None) from the model's
own `generation_config.json`, so a model that ships `repetition_penalty` or `no_repeat_ngram_size`
(Qwen2.5-Instruct does) would sample from a distribution the trainer never computes. Two guards:
`NEUTRAL` sets every logits processor transformers could inherit to its no-op value, and
`model_defaults_off` hides the model's generation_config during `generate` for those whose only
no-op value is None (bad words, forced and suppressed tokens, sequence bias, watermarking, ...).
"""

from __future__ import annotations

import contextlib

from transformers import GenerationConfig

# Every processor field with a non-None no-op value (transformers' `_get_logits_processor`).
NEUTRAL = dict(
    repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
    typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, guidance_scale=1.0,
    renormalize_logits=False, remove_invalid_values=False, num_beams=1, length_penalty=1.0,
)


def _transformers_model(policy):
    """The transformers model under a PEFT wrapper (its generation_config is the one generate reads)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


@contextlib.contextmanager
def model_defaults_off(policy):
    """Generate with no fallback to the model's generation_config; the model keeps (and saves) its own."""
    model = _transformers_model(policy)
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own

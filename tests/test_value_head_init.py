"""model.value_head_init: the shared value head starts from lm-human-preferences' small normal
weights, or from zeros so that every first value is 0 (the first advantages are the returns)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_app.config import ConfigError, load_config
from rlhf_app.models.policy import PolicyAndValue


def _values(init: str) -> torch.Tensor:
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    model = PolicyAndValue(policy, value_head_init=init).eval()
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, values = model(ids, torch.ones_like(ids), response_length=4)
    return values


def test_zeros_start_every_value_at_zero():
    values = _values("zeros")
    assert values.shape == (3, 4) and torch.equal(values, torch.zeros(3, 4))


def test_the_default_normal_head_gives_nonzero_values():
    assert _values("normal").abs().min() > 0


def test_an_unknown_init_is_refused_in_one_line():
    assert load_config(["model.value_head_init=zeros"]).model.value_head_init == "zeros"
    with pytest.raises(ConfigError, match="value_head_init.*normal.*zeros"):
        load_config(["model.value_head_init=uniform"])

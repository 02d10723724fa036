"""`ppo.ent_cap`: the entropy bonus counts each token's entropy up to the cap (hand-computed values)."""

import pytest
import torch

from rlhf_app.config import ConfigError, load_config
from rlhf_app.rl.losses import micro_batch_loss
from rlhf_app.rl.micro import loss_normaliser


def _loss(overrides):
    """Two episodes of 4 tokens, 3 and 2 of them real; entropies 0.5, 2, 6 | 1, 8 (the padding's 50 never counts);
    zero advantages and equal log-probs, so the loss is the entropy term alone."""
    cfg = load_config(["recipe=tiny", "ppo.ent_coef=0.1", *overrides])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    entropy = torch.tensor([[0.5, 2.0, 6.0, 50.0], [1.0, 8.0, 50.0, 50.0]], requires_grad=True)
    zeros = torch.zeros(2, 4)
    loss, row = micro_batch_loss(cfg.ppo, cfg.algorithm, zeros, entropy, zeros, zeros, zeros, mask, mask.sum(),
                                 loss_normaliser(mask, cfg.algorithm.loss_agg_mode))
    loss.backward()
    return loss.item(), row["policy/entropy_avg"].item(), entropy.grad


def test_uncapped_bonus_is_the_mean_entropy():
    loss, logged, grad = _loss([])
    assert logged == pytest.approx(17.5 / 5)
    assert loss == pytest.approx(-0.1 * 17.5 / 5)
    assert torch.allclose(grad, torch.tensor([[-0.02, -0.02, -0.02, 0], [-0.02, -0.02, 0, 0]]))


def test_cap_stops_the_push_on_tokens_above_it_and_logs_the_true_entropy():
    loss, logged, grad = _loss(["ppo.ent_cap=3.0"])
    assert logged == pytest.approx(17.5 / 5)  # the metric is the policy's entropy, not the capped one
    assert loss == pytest.approx(-0.1 * (0.5 + 2.0 + 3.0 + 1.0 + 3.0) / 5)
    # tokens at 6 and 8 nats (over the cap) get no gradient from the bonus; the others the uncapped one
    assert torch.allclose(grad, torch.tensor([[-0.02, -0.02, 0, 0], [-0.02, 0, 0, 0]]))


def test_cap_must_be_positive():
    with pytest.raises(ConfigError, match="ent_cap"):
        load_config(["recipe=tiny", "ppo.ent_cap=0"])

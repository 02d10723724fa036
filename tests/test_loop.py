"""The loop's own decisions, without a training run: the run state a checkpoint stores, and when the
update's log-probs stand in for a separate forward."""

from types import SimpleNamespace

import pytest

from rlhf_app.config import load_config
from rlhf_app.config.train_config import num_updates
from rlhf_app.rl.core import KLController
from rlhf_app.rl.estimators import ESTIMATORS
from rlhf_app.rl.loop import RunState, reuses_update_logprobs


def test_run_state_reads_a_checkpoints_trainer_state():
    # A checkpoint's trainer_state.pt as earlier versions wrote it: step and episode beside the rest.
    saved = {"step": 3, "episode": 96, "scheduler": {}, "kl_ctl": {"value": 0.05}, "sampler": {"epoch": 0}}
    state = RunState.from_checkpoint(saved)
    assert (state.step, state.episode) == (3, 96)
    assert state.to_checkpoint() == {"step": 3, "episode": 96}
    assert list(state.to_checkpoint()) == ["step", "episode"]  # trainer_state.json keeps this order
    assert RunState() == RunState(step=0, episode=0)


def test_num_updates_rounds_the_last_partial_batch_up():
    ppo = load_config(["recipe=tiny", "ppo.total_episodes=100"]).ppo
    assert ppo.local_batch_size == 32
    # 100 episodes over 32, 64, 96 per update: 3.1 -> 4, 1.6 -> 2, 1.04 -> 2
    assert (num_updates(ppo, 1), num_updates(ppo, 2), num_updates(ppo, 3)) == (4, 2, 2)


GRPO_ONE_STEP = ["ppo.num_ppo_epochs=1", "ppo.num_mini_batches=1", "ppo.kl_coef=0", "algorithm.advantage_estimator=grpo",
                 "algorithm.num_generations=4"]


@pytest.mark.parametrize("change, reuses", [
    ([], True),
    (["ppo.num_ppo_epochs=2"], False),  # a second epoch's ratio needs the log-probs before the first step
    (["ppo.num_mini_batches=2", "ppo.gradient_accumulation_steps=2"], False),
    (["ppo.kl_coef=0.05"], False),  # the KL in the reward needs the log-probs before the update
    (["ppo.adaptive_kl=true"], False),
    (["algorithm.advantage_estimator=gae"], False),  # the critic's values need their own forward
])
def test_the_update_reuses_its_logprobs_only_for_one_step_without_critic_or_kl(change, reuses):
    cfg = load_config(["recipe=tiny", *GRPO_ONE_STEP, *change])
    ppo = cfg.ppo
    kl_ctl = KLController(ppo.kl_coef, ppo.adaptive_kl)
    estimator = ESTIMATORS[cfg.algorithm.advantage_estimator]
    same = SimpleNamespace(on_policy=True)
    assert reuses_update_logprobs(ppo, estimator, kl_ctl, same) is reuses
    # An engine that samples older weights (async) or needs the trainer's log-probs first (importance weights).
    assert reuses_update_logprobs(ppo, estimator, kl_ctl, SimpleNamespace(on_policy=False)) is False

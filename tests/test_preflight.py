"""Checks before training: each bad setting ends the run with one line that names the fix."""

import pytest
from datasets import Dataset
from transformers import GPT2Config, LlamaConfig

from rlhf_app.cli.main import main
from rlhf_app.preflight import PreflightError, check_positions, check_prompts_fill_a_batch, model_positions


def test_prompt_plus_response_must_fit_the_positions():
    assert model_positions(GPT2Config(n_positions=64)) == 64
    assert model_positions(LlamaConfig(max_position_embeddings=128)) == 128
    ds = {"training": Dataset.from_dict({"input_ids": [[1] * 10, [1] * 40]}),
          "held-out": Dataset.from_dict({"input_ids": [[1] * 50]})}
    check_positions(GPT2Config(n_positions=64), {"training": ds["training"]}, 24)  # 40 + 24 = 64 fits
    with pytest.raises(PreflightError) as err:
        check_positions(GPT2Config(n_positions=64), ds, 24)  # the held-out prompt: 50 + 24 > 64
    assert str(err.value) == ("the longest held-out prompt (50 tokens) + ppo.response_length (24) = 74 exceeds the "
                              "model's 64 positions: lower ppo.response_length to 14, or lower data.max_prompt_length")


def test_fewer_prompts_than_one_update():
    check_prompts_fill_a_batch(64, 32, 2)
    with pytest.raises(PreflightError, match="63 training prompts cannot fill one update of 64 episodes"):
        check_prompts_fill_a_batch(63, 32, 2)
    # GRPO: 32 episodes per process are 4 prompts x 8 generations, so 2 processes need 8 distinct prompts
    check_prompts_fill_a_batch(8, 32, 2, num_generations=8)
    with pytest.raises(PreflightError, match=r"7 training prompts cannot fill one update of 64 episodes \(8 prompts x 8"):
        check_prompts_fill_a_batch(7, 32, 2, num_generations=8)


@pytest.mark.parametrize("arg, start", [
    ("ppo.response_length=300", "error: the longest training prompt"),
    ("data.num_train=4", "error: 4 training prompts cannot fill one update of 32 episodes"),
])
def test_the_run_stops_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, arg, start):
    from rlhf_app.models import policy as models

    monkeypatch.setattr(models, "build_models", lambda cfg: pytest.fail("a model loaded before the error"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "recipe=tiny", f"output_dir={tmp_path / 'run'}", arg])
    assert str(exit_.value.code).startswith(start) and "\n" not in exit_.value.code
    assert "parameters" not in capsys.readouterr().out  # the policy was never built


def test_settings_checks_name_the_fix_before_the_run_folder(monkeypatch):
    from rlhf_app.config import load_config
    from rlhf_app.extras import MissingExtra
    from rlhf_app.preflight import check_settings

    sources, token = check_settings(load_config(["recipe=tiny"]))
    assert [s.name for s in sources] == ["toy"] and token is None
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(PreflightError, match=r"^model\.load_in_4bit=true needs .*a CUDA GPU"):
        check_settings(load_config(["recipe=tiny", "peft.enabled=true", "model.load_in_4bit=true"]))
    monkeypatch.setattr("rlhf_app.extras.installed", lambda module: module != "trackio")
    with pytest.raises(MissingExtra, match=r"^report_to=trackio needs the trackio package"):
        check_settings(load_config(["recipe=tiny", "report_to=trackio"]))

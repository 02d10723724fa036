"""Tool settings under TRL's names (issue 23): flat keys on the command line, and every bad tool, environment or
chat template refused in one line that names the fix, before any model loads."""

import pytest

from rlhf_app import preflight
from rlhf_app.config import ConfigError, load_config
from rlhf_app.engines.tool_specs import ToolSpecError
from rlhf_app.models.policy import load_tokenizer
from tool_fixtures import write_tools

DOC = '"""Add.\n\n    Args:\n        a: one\n        b: two\n    """'
NO_RESET = f"class Env:\n    def add(self, a: int, b: int) -> int:\n        {DOC}\n        return a + b\n"
BAD_METHOD = "class Env:\n    def reset(self, **row):\n        return None\n\n    def add(self, a, b):\n        return a + b\n"
BROKEN_INIT = "class Env:\n    def __init__(self, size):\n        self.size = size\n\n    def reset(self, **row):\n        pass\n"


def _refused(error, match, *args):
    with pytest.raises(error, match=match) as err:
        cfg = load_config(["recipe=tiny", *args])
        preflight.check_settings(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_trl_flat_names_set_the_tool_keys(tmp_path):
    spec = write_tools(tmp_path, "good")
    cfg = load_config(["recipe=tiny", "--tools", spec, "--max_tool_calling_iterations", "3", "--tool_timeout", "2.5",
                       "tool_isolation=process", f"rollout.environment_factory.words={tmp_path}/envs.py:Words"])
    r = cfg.rollout
    assert (r.tools, r.max_tool_calling_iterations, r.tool_timeout, r.tool_isolation) == ([spec], 3, 2.5, "process")
    assert r.environment_factory == {"words": f"{tmp_path}/envs.py:Words"}
    assert r.uses_tools and not load_config(["recipe=tiny"]).rollout.uses_tools
    single = load_config(["recipe=tiny", f"environment_factory={tmp_path}/envs.py:Words"])
    assert single.rollout.environment_factory == f"{tmp_path}/envs.py:Words"


@pytest.mark.parametrize("args, match", [
    (["tool_isolation=thread"], r"rollout.tool_isolation='thread' is not one of none, process"),
    (["tool_timeout=0"], r"rollout.tool_timeout must be > 0 seconds"),
    (["max_tool_calling_iterations=-1"], r"must be >= 0 or null"),
    (["tools=[calculator]"], r"rollout.tools entry='calculator' is not function: write module:function"),
    (["rollout.environment_factory.x=nothing"], r"environment_factory.x='nothing' is not Class"),
    (["tools=[m:f]", "rollout.async=true", "rollout.engine=vllm"], r"rollout.async=true does not run tools yet"),
    (["model.chat_template=missing.jinja"], r"neither a file nor a Jinja template"),
])
def test_bad_settings_are_one_line(args, match):
    _refused(ConfigError, match, *args)


def test_tools_and_environments_that_cannot_work_are_one_line(tmp_path):
    _refused(ToolSpecError, r"tool 'no_such_module:fn': cannot import module no_such_module", "tools=[no_such_module:fn]")
    (tmp_path / "x.py").write_text("y = 1\n")
    _refused(ToolSpecError, r"x.py defines no 'nope'", f"tools=[{tmp_path / 'x.py'}:nope]")
    message = _refused(ToolSpecError, r"cannot be shown to the model", f"tools=[{write_tools(tmp_path, 'untyped')}]")
    assert "type hint" in message and "Args:" in message
    for name, text, match in [("noreset", NO_RESET, "Env has no reset method: define reset"),
                              ("badmethod", BAD_METHOD, "method Env.add cannot be shown to the model"),
                              ("brokeninit", BROKEN_INIT, "calling it with no arguments failed")]:
        (tmp_path / f"{name}.py").write_text(text)
        _refused(ToolSpecError, match, f"environment_factory={tmp_path}/{name}.py:Env")
    twice = write_tools(tmp_path, "good")
    _refused(ToolSpecError, "names lookup more than once", f"tools=[{twice},{twice}]")


def test_a_template_without_tool_support_is_refused_before_the_policy_loads(tmp_path):
    spec = write_tools(tmp_path, "good")
    cfg = load_config(["recipe=tiny", f"tools=[{spec}]"])  # asset:tiny has no chat template at all
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    with pytest.raises(preflight.PreflightError,
                       match="model.chat_template=asset:chatml-tools .* clone_chat_template") as err:
        preflight.check_tool_template(cfg, tokenizer)
    assert "\n" not in str(err.value)
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"  # renders text only: tool calls vanish
    (tmp_path / "plain.jinja").write_text(plain)
    cfg = load_config(["recipe=tiny", f"tools=[{spec}]", f"model.chat_template={tmp_path / 'plain.jinja'}"])
    tokenizer = load_tokenizer(cfg.model.name_or_path, chat_template=cfg.model.chat_template)
    assert tokenizer.chat_template == plain == load_tokenizer("asset:tiny", chat_template=plain).chat_template
    with pytest.raises(preflight.PreflightError, match="cannot render tool calls"):
        preflight.check_tool_template(cfg, tokenizer)


def test_model_chat_template_from_a_file_gives_the_tiny_model_tools(tmp_path):
    from rlhf_app.assets.tiny_tools import TEMPLATE

    (tmp_path / "tools.jinja").write_text(TEMPLATE)
    cfg = load_config(["recipe=tiny", f"tools=[{write_tools(tmp_path, 'good')}]",
                       f"model.chat_template={tmp_path / 'tools.jinja'}"])
    tokenizer = load_tokenizer(cfg.model.name_or_path, chat_template=cfg.model.chat_template)
    with pytest.raises(ToolSpecError, match="no parser for this chat template's tool calls: save a response_template"):
        preflight.check_tool_template(cfg, tokenizer)  # renders tools, but nothing can parse its calls
    tokenizer = load_tokenizer("asset:tiny-tools")  # the same template with its response template saved
    preflight.check_tool_template(cfg, tokenizer)

"""The GSM8K tools recipe's pieces: the calculator tool, the ChatML tool template (TRL accepts it, renders a
tool conversation, parses a turn back), the supervised set with every step a calculator call, and the SFT stage
trained on tool conversations with the loss on the assistant turns only."""

import json

import pytest
from transformers import AutoTokenizer
from trl.chat_template_utils import is_chat_template_prefix_preserving, parse_response, supports_tool_calling

from rlhf_app.assets import chat_templates, gsm8k, gsm8k_tools
from rlhf_app.assets.registry import resolve
from rlhf_app.config import ConfigError, load_config
from rlhf_app.tools.calculator import calculator


@pytest.mark.parametrize("expression, value", [
    ("48*5", "240"), ("(3+4)/2", "3.5"), ("0.1+0.2", "0.3"), ("2**10", "1024"), ("-3+5", "2"), ("7//2", "3"),
    ("7 % 3", "1"), ("2/3", "0.6666666667"), ("0.5*438+17", "236")])
def test_calculator_values_by_hand(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize("expression, why", [
    ("x+1", "the name 'x' is not allowed"), ("__import__('os')", "a function call is not allowed"),
    ("(1).real", "an attribute"), ("2**1000", "exponent 1000 is too large"), ("1/0", "division by zero"),
    ("9**9**9", "too large"), ("10**99*10**99", "the result is too large"), ("(-8)**0.5", "fractional power"),
    ("True+1", "the value True"), ("'a'*3", "the value 'a'"), ("2 x 3", "cannot read"), ("1" * 201, "too long"),
    ("1<2", "a comparison")])
def test_calculator_refuses_with_a_message(expression, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace("*", r"\*")):
        calculator(expression)


def _smollm2_style_tokenizer():
    """asset:tiny-chat: the ChatML tool template on an ASCII vocabulary (SmolLM2's own has no tool support)."""
    return AutoTokenizer.from_pretrained(resolve("asset:tiny-chat"))


CONVERSATION = [
    {"role": "user", "content": "What is 48 times 5?"},
    {"role": "assistant", "content": "He sells", "tool_calls": [gsm8k_tools.tool_call("48*5")]},
    {"role": "tool", "name": "calculator", "content": "240"},
    {"role": "assistant", "content": "240 clips.\n#### 240"}]


def test_template_renders_tools_calls_and_results_and_trl_accepts_it():
    tok = _smollm2_style_tokenizer()
    assert supports_tool_calling(tok) and is_chat_template_prefix_preserving(tok)
    text = tok.apply_chat_template(CONVERSATION, tools=[calculator], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                           "\n\nYou can call these tools:\n<tools>\n{\"name\": \"calculator\", \"description\": "
                           "\"Evaluates arithmetic.\"")
    assert text.endswith(
        "<|im_start|>user\nWhat is 48 times 5?<|im_end|>\n<|im_start|>assistant\nHe sells\n<tool_call>{\"name\": "
        "\"calculator\", \"arguments\": {\"expression\": \"48*5\"}}</tool_call><|im_end|>\n<|im_start|>tool\n"
        "<tool_response>240</tool_response><|im_end|>\n<|im_start|>assistant\n240 clips.\n#### 240<|im_end|>\n")
    # without tools it is SmolLM2's own template, character for character
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(plain, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")
    # the assistant turns, and only they, are inside the generation markers (tool results are not trained)
    out = tok.apply_chat_template(CONVERSATION, tools=[calculator], return_dict=True,
                                  return_assistant_tokens_mask=True)
    trained = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == ("He sells\n<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"48*5\"}}"
                       "</tool_call><|im_end|>240 clips.\n#### 240<|im_end|>")


def test_a_generated_turn_parses_back_with_trls_parse_response():
    tok = _smollm2_style_tokenizer()
    prefix = tok.apply_chat_template(CONVERSATION[:1], tools=[calculator], add_generation_prompt=True)["input_ids"]
    ids = lambda text: tok(text)["input_ids"]  # noqa: E731
    call = parse_response(tok, ids("He sells\n<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": "
                                   "\"48*5\"}}</tool_call><|im_end|>"), prefix=prefix, tools=[calculator])
    assert call == {"role": "assistant", "content": "He sells", "tool_calls": [gsm8k_tools.tool_call("48*5")]}
    two = parse_response(tok, ids('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>\n'
                                  '<tool_call>{"name": "calculator", "arguments": {"expression": "2+1"}}</tool_call>'
                                  '<|im_end|>'), prefix=prefix)
    assert [c["function"]["arguments"]["expression"] for c in two["tool_calls"]] == ["1+1", "2+1"]
    answer = parse_response(tok, ids("240 clips.\n#### 240<|im_end|>"), prefix=prefix)
    assert answer == {"role": "assistant", "content": "240 clips.\n#### 240"}
    broken = parse_response(tok, ids('<tool_call>{"name": "calculator", "argu</tool_call><|im_end|>'), prefix=prefix)
    assert "tool_calls" not in broken  # a malformed call is text: TRL's fallback, a failed call for the loop


def test_chat_template_setting_names_a_shipped_template_a_file_or_text(tmp_path):
    tok = _smollm2_style_tokenizer()
    tok.chat_template, tok.response_template = "{{ 'x' }}", None
    chat_templates.apply(tok, "asset:chatml-tools")
    assert supports_tool_calling(tok) and tok.response_template["start_anchor"] == "<|im_start|>assistant\n"
    tok.save_pretrained(tmp_path / "saved")  # final/ keeps both
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again.chat_template == tok.chat_template and again.response_template == tok.response_template
    chat_templates.apply(tok, "{{ messages[0]['content'] }}")  # another template: the old parser goes with it
    assert tok.response_template is None
    with pytest.raises(ConfigError, match="available are asset:chatml-tools"):
        chat_templates.apply(tok, "asset:chatml")
    with pytest.raises(ConfigError, match="neither a file nor a Jinja template"):
        load_config(["recipe=tiny", "model.chat_template=missing.jinja"])


@pytest.mark.parametrize("solution, answer, turns", [
    ("Ben has 8*0.5=4 tubes\nBen has a total of 4+9=13 tubes\n#### 13", "13",
     [("Ben has", "8*0.5", "4"), ("4 tubes\nBen has a total of", "4+9", "13"), "13 tubes\n#### 13"]),
    ("He sells 36 lilies x €6 = €216 in all.\n#### 216.0", "216",  # units and currency out, '#### 216'
     [("He sells", "36*6", "216"), "€216 in all.\n#### 216"]),
    ("It takes 1+2(10)=21.0 minutes\n#### 21", "21", [("It takes", "1+2*(10)", "21"), "21 minutes\n#### 21"]),
    ("So that's 0.38*40 = 15 students\n#### 15", "15", None),  # the calculator says 15.2: the row goes
    ("It is 100% - 60% = 40% of the quiz, 40 + 2 = 42\n#### 42", "42", None),  # a step left in the prose
    ("We get 2x+20=84, so x=32\n#### 32", "32", None),  # no calculator step at all
    ("Total 3 + 4 = 7\n#### 8", "9", None),  # the written answer is not the problem's
])
def test_worked_solutions_become_calculator_turns(solution, answer, turns):
    got = gsm8k_tools.to_tool_turns(solution, answer)
    if turns is None:
        assert got is None
        return
    want = []
    for turn in turns[:-1]:
        prose, expression, value = turn
        want += [{"role": "assistant", "content": prose, "tool_calls": [gsm8k_tools.tool_call(expression)]},
                 {"role": "tool", "name": "calculator", "content": value}]
    assert got == want + [{"role": "assistant", "content": turns[-1]}]


def test_tools_sft_set_every_result_is_the_calculators_and_no_evaluation_problem(tmp_path):
    info = gsm8k_tools.build_tools_sft(tmp_path, n=80)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert info["rows"] == len(rows) and 0.6 * 80 < len(rows) < 80  # most convert; some go
    problems = {gsm8k.gsm8k_user_turn(p["question"])["content"]: p for p in gsm8k.train_problems(80, gsm8k.SFT_SEED)}
    evaluated = {p["question"] for p in gsm8k.eval_problems()}
    for row in rows:
        assert json.loads(row["tools"])[0]["function"]["name"] == "calculator"
        problem = problems[row["prompt"][0]["content"]]  # one of asset:gsm8k-sft's problems, none evaluated
        assert problem["question"] not in evaluated
        turns = row["completion"]
        for call, result in zip(turns[0:-1:2], turns[1::2]):
            assert call["role"] == "assistant" and result["role"] == "tool"
            assert result["content"] == calculator(call["tool_calls"][0]["function"]["arguments"]["expression"])
        assert turns[-1]["role"] == "assistant" and "tool_calls" not in turns[-1]
        assert float(turns[-1]["content"].rsplit("#### ", 1)[1]) == float(problem["answer"])


def _tool_rows(n=24):
    """Short tool conversations on the tiny-chat alphabet: add two numbers with the calculator."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 7 * i
        rows.append({"prompt": [{"role": "system", "content": "Add."}, {"role": "user", "content": f"{a} and {b}"}],
                     "completion": [{"role": "assistant", "content": "",
                                     "tool_calls": [gsm8k_tools.tool_call(f"{a}+{b}")]},
                                    {"role": "tool", "name": "calculator", "content": calculator(f"{a}+{b}")},
                                    {"role": "assistant", "content": f"#### {a + b}"}],
                     "tools": json.dumps(gsm8k_tools.tool_schemas())})
    return rows


def _sft_cfg(tmp_path, *overrides):
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _tool_rows()))
    return load_config(["recipe=tiny", f"output_dir={tmp_path / 'sft'}", f"sft.dataset={data}",
                        "model.name_or_path=asset:tiny-chat", "model.chat_template=asset:chatml-tools",
                        "sft.max_length=1024", "sft.num_eval=4", "--max_steps", "6", "--learning_rate", "3e-3",
                        *overrides], stage="sft")


@pytest.mark.slow
def test_sft_on_tool_conversations_trains_the_assistant_turns_only(tmp_path):
    from transformers import TrainerCallback

    from rlhf_app.stages import sft

    seen = {}

    class Peek(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kwargs):
            seen["row"], seen["tok"] = train_dataloader.dataset[0], processing_class

    final = sft.run(_sft_cfg(tmp_path, "sft.assistant_only_loss=true"), callbacks=[Peek()])
    row, tok = seen["row"], seen["tok"]
    labels = [t for t in row["labels"] if t != -100] if "labels" in row else \
        [t for t, m, c in zip(row["input_ids"], row["assistant_masks"], row["completion_mask"]) if m and c]
    trained = tok.decode(labels)
    assert trained.startswith("<tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"")
    assert "<tool_response>" not in trained and trained.count("<|im_end|>") == 2 and "\n#### " not in trained
    assert trained.split("</tool_call><|im_end|>")[1].startswith("#### ")
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    saved = AutoTokenizer.from_pretrained(final)  # PPO's tokenizer: the tool template and its parser
    assert supports_tool_calling(saved) and saved.response_template is not None


def test_tool_turns_without_assistant_only_loss_or_tool_template_are_one_line(tmp_path):
    from rlhf_app.cli.main import main as cli

    def error(*overrides):
        cfg = _sft_cfg(tmp_path, *overrides)
        argv = ["sft", "recipe=tiny", f"output_dir={cfg.output_dir}", f"sft.dataset={cfg.sft.dataset}",
                "model.name_or_path=asset:tiny-chat", *overrides]
        with pytest.raises(SystemExit) as exit_info:
            cli(argv)
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "\n" not in message, message
        return message

    plain = tmp_path / "chatml.jinja"  # SmolLM2's own kind: ChatML without tools
    plain.write_text("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                     "{% endfor %}")
    assert "set sft.assistant_only_loss=true" in error("model.chat_template=asset:chatml-tools")
    assert "model.chat_template=asset:chatml-tools" in error(f"model.chat_template={plain}",
                                                             "sft.assistant_only_loss=true")
    assert not (tmp_path / "sft" / "config.yaml").exists()  # before the run folder and any model


def test_bench_counts_tool_calls_and_sets_the_recipe_against_its_no_tool_twin():
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import learning
    import phases

    def reward(prompts, completions, **columns):
        return [1.0] * len(completions)

    reward.extra_metrics = lambda prompts, completions, **columns: {"accuracy": 0.5}
    counted = phases.ToolCount(reward)
    assert counted(["p"] * 3, ["a", "b", "c"], tool_calls=[2, 0, 3], tool_failures=[1, 0, 0]) == [1.0] * 3
    counted(["p"], ["d"], tool_calls=[1], tool_failures=[0])
    assert counted.extra_metrics([], []) == {"accuracy": 0.5}  # the reward's own attributes pass through
    assert counted.figures() == {"tool_calls_per_episode": 6 / 4, "episodes_with_calls": 3 / 4,
                                 "tool_call_success": 5 / 6}
    assert phases.ToolCount(reward).figures() == {}  # no tools: nothing added
    assert learning.TOOLS_TWIN["gsm8k-tools-offline"] in learning.RECIPES
    assert set(learning.TOOLS_TWIN) <= set(learning.PIPELINES) and "gsm8k-tools-sft" in learning.ASSETS["gsm8k-tools-offline"]

    def entry(p, se):
        return {"phases": {"phases": {"ppo": {"generated": {"accuracy_strict": p, "accuracy_strict_se": se}}}}}

    got = learning.against_no_tools(entry(0.30, 0.03), entry(0.10, 0.04))
    assert list(got) == ["ppo/generated"]
    assert got["ppo/generated"]["diff"] == pytest.approx(0.20) and got["ppo/generated"]["se"] == pytest.approx(0.05)
    assert got["ppo/generated"]["in_se"] == pytest.approx(0.20 / math.hypot(0.03, 0.04))

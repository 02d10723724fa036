"""Bad recipes, config values and data files (issue 24, cases 6 and 8 and the data tracebacks): each
is one line naming the file (and line) and the fix, before any model loads."""

import json
import math

import pytest

from rlhf_app.config import ConfigError, RewardConfig, load_config
from rlhf_app.data import DataError
from rlhf_app.data import prompts as data


# ---------------------------------------------------------------- recipes (case 8)

@pytest.mark.parametrize("argv", [["recipe=demo", "--config", "tiny"], ["--config", "tiny", "recipe=demo"],
                                  ["--config", "tiny", "--config", "demo"], ["recipe=tiny", "recipe=demo"],
                                  ["--config=tiny", "recipe=tiny"]])
def test_two_recipes_on_one_command_line_are_refused(one_line_error, argv):
    message = one_line_error(["train", *argv], models_may_load=False)
    assert "two recipes on one command line" in message and "pass one recipe" in message


@pytest.mark.parametrize("text, shape", [("- a\n- b\n", "holds a list"), ("5\n", "holds only 5"),
                                         ("just words\n", "holds only 'just words'"), ("", "is empty"),
                                         ("# only a comment\n", "is empty")])
@pytest.mark.parametrize("form", ["recipe={}", "--config {}"])
def test_a_recipe_that_is_not_a_mapping_is_refused_naming_the_file(one_line_error, tmp_path, text, shape, form):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = one_line_error(["train", *form.format(path).split(" ")], models_may_load=False)
    assert f"recipe {path} {shape}: a recipe is a mapping of keys" in message


# ---------------------------------------------------------------- non-finite numbers (case 6)

@pytest.mark.parametrize("override, key", [
    ("reward.weights=[nan,1.0]", "reward.weights"), ("reward.weights=[inf,1]", "reward.weights"),
    ("reward.weights=[1,-inf]", "reward.weights"), ("ppo.learning_rate=inf", "ppo.learning_rate"),
    ("ppo.learning_rate=nan", "ppo.learning_rate"), ("ppo.kl_coef=inf", "ppo.kl_coef"),
    ("reward.score=nan", "reward.score"), ("rollout.vllm_gpu_memory_utilization=nan", "rollout.vllm_gpu_memory_utilization"),
    ("--reward_weights=[nan,1]", "reward.weights"),
])
def test_non_finite_numbers_are_refused_at_config_time(override, key):
    argv = ["recipe=tiny", override] + (["reward.funcs=[toy,toy]"] if "weights" in override else [])
    with pytest.raises(ConfigError, match=rf"^{key}=.* a finite number: set a finite value$"):
        load_config(argv)


def test_a_reward_config_built_in_code_refuses_a_nan_weight():
    with pytest.raises(ConfigError, match="reward.weights=.*holds nan"):
        RewardConfig(funcs=["toy", "toy"], weights=[math.nan, 1.0])


# ---------------------------------------------------------------- data files, through the command line

def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


TEXT = [{"prompt": "the movie was", "answer": "1"}] * 40
BAD_FILES = {
    "all-empty.jsonl": (_jsonl([{"prompt": ""}] * 30 + [{"prompt": "  "}] * 10), "every prompt in column 'prompt' is empty"),
    "completions.jsonl": (_jsonl([{"prompt": "the movie", "completions": "x"}] * 40),
                          "has a column 'completions', a name the reward functions already receive"),
    "trainer_state.jsonl": (_jsonl([{"prompt": "the movie", "trainer_state": 1}] * 40),
                            "has a column 'trainer_state', a name the reward functions already receive"),
    "input_ids.jsonl": (_jsonl([{"prompt": "the movie", "input_ids": [1, 2]}] * 40),
                        "has a column 'input_ids', which rlhf_app writes itself"),
    "empty.jsonl": ("", "empty.jsonl is empty"),
    "blank.jsonl": ("\n\n", "blank.jsonl is empty"),
    "broken.jsonl": (_jsonl(TEXT[:6]) + '{"prompt": "the movie"\n' + _jsonl(TEXT[:6]), "broken.jsonl, line 7: not valid JSON"),
    "not-object.jsonl": (_jsonl(TEXT[:3]) + "[1, 2]\n" + _jsonl(TEXT[:6]), "not-object.jsonl, line 4: holds [1, 2], not an object"),
    "no-prompt.csv": ("text,answer\nthe movie,1\n" * 20, "data.prompt_column='prompt' is not a column of"),
    "fake.parquet": ("this is not parquet\n", "fake.parquet as .parquet (ArrowInvalid: Parquet magic bytes"),
    "ragged.csv": ("prompt,answer\nthe movie,1\nthe film,2,3\n" * 10, "ragged.csv as .csv (ParserError: "),
    "broken.json": ('[{"prompt": "the movie"},\n{"prompt": }]\n', "broken.json, line 2: not valid JSON"),
    "null-prompt.jsonl": (_jsonl(TEXT[:4] + [{"answer": "1"}] + TEXT[:10]), "null-prompt.jsonl, line 5: "
                          "data.prompt_column='prompt' holds no prompt (null)"),
    "number-prompt.jsonl": (_jsonl(TEXT[:2] + [{"prompt": 5}] + TEXT[:10]), "line 3: data.prompt_column='prompt' holds 5 (int)"),
    "chat-then-text.jsonl": (_jsonl([{"prompt": [{"role": "user", "content": "hi"}]}] * 5 + TEXT[:10]),
                             "chat-then-text.jsonl, line 1 holds a conversation but "),
    "text-then-chat.jsonl": (_jsonl(TEXT[:5] + [{"prompt": [{"role": "user", "content": "hi"}]}] * 5),
                             "text-then-chat.jsonl, line 6 holds a conversation but "),
    "empty-chat.jsonl": (_jsonl([{"prompt": [{"role": "user", "content": "hi"}]}] * 3 + [{"prompt": []}] * 5),
                         "empty-chat.jsonl, line 4: the conversation is empty"),
    "no-role.jsonl": (_jsonl([{"prompt": [{"content": "hi"}]}] * 5), "line 1: {'content': 'hi'} is not a {role, content} message"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_malformed_data_file_is_one_line_naming_it_before_models_load(one_line_error, tmp_path, name):
    text, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    message = one_line_error(["train", "recipe=tiny", f"data.name={path}", f"output_dir={tmp_path}/run"],
                             models_may_load=False)
    assert expected in message and str(path) in message, message
    assert "holds a list" not in message  # the old, misleading answer to a mixed column


def test_a_bad_file_in_a_data_folder_is_named_with_its_line(one_line_error, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(_jsonl(TEXT) + '{"prompt": \n')
    message = one_line_error(["train", "recipe=tiny", f"data.name={tmp_path / 'data'}", f"output_dir={tmp_path}/run"],
                             models_may_load=False)
    assert f"{tmp_path / 'data' / 'train.jsonl'}, line 41: not valid JSON" in message


def test_an_eval_split_a_local_file_lacks_is_one_line(one_line_error, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_jsonl(TEXT))
    message = one_line_error(["train", "recipe=tiny", f"data.name={path}", "data.eval_split=test",
                              f"output_dir={tmp_path}/run"], models_may_load=False)
    assert f"data.eval_split=test: {path} has no split 'test'" in message and "unset data.eval_split" in message


def test_some_empty_prompts_are_dropped_with_a_note(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(_jsonl([{"prompt": "a b"}] * 16 + [{"prompt": ""}] * 4))
    train, evals = data.load_prompts(load_config([f"data.name={path}", "data.eval_fraction=0.2"]), _words())
    assert len(train) + len(evals) == 16 and all(len(ids) for ids in train["input_ids"])
    assert "prompts that are empty (no tokens)" in capsys.readouterr().out


# ---------------------------------------------------------------- conversations the chat template refuses

STRICT_TEMPLATE = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
                   "{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}"
                   "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def _words(template=None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate("<pad> <eos> <unk> a b c".split())}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = template
    return tok


def test_a_role_the_chat_template_rejects_names_the_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "a"}]}] * 9 + [{"prompt": [{"role": "robot", "content": "a"}]}]
    path.write_text(_jsonl(rows))
    cfg = load_config([f"data.name={path}", "data.eval_fraction=0.5"])
    with pytest.raises(DataError, match=rf"^{path}, line 10: the policy tokenizer's chat template refused this "
                                        r"conversation \(TemplateError: Unknown role: robot\)"):
        data.load_prompts(cfg, _words(STRICT_TEMPLATE))

"""`rlhf-app label`: the pairs it reads, every choice on disk at once and continued after a kill, TRL's
preference file that `rlhf-app rm` reads, bad inputs as one line, and a person's clicks and keys in a
real headless Chromium (tests/cdp.py) with the server killed (SIGKILL) and restarted in the middle."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cdp import Browser, chromium_path, read_lines, wait_for_line
from rlhf_app.cli.main import main as cli
from rlhf_app.label import LabelError
from rlhf_app.label.pairs import left_of, read_pairs
from rlhf_app.label.store import Store, choices_path

ROOT = Path(__file__).resolve().parent.parent


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _pairs(n):
    return [{"prompt": f"prompt {i}", "completions": [f"first answer {i}", f"second answer {i}"]} for i in range(n)]


def test_both_input_formats_are_read_and_bad_rows_are_one_line(tmp_path):
    chat = [{"role": "user", "content": "hi"}]
    rows = [{"prompt": "p", "completions": ["x", "y"], "scores": [1, 2]},
            {"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 0.5},
            {"chosen": "no prompt", "rejected": "at all", "completions": ["of", "three", "kept"]},
            {"prompt": chat, "completions": [[{"role": "assistant", "content": "a"}], [{"role": "assistant",
                                                                                        "content": "b"}]]}]
    pairs = read_pairs(_jsonl(tmp_path / "in.jsonl", rows))
    assert [(p.index, p.prompt, p.completions) for p in pairs[:3]] == [
        (0, "p", ("x", "y")), (1, "q", ("good", "bad")), (2, None, ("no prompt", "at all"))]
    assert pairs[3].prompt == chat and len({p.key for p in pairs}) == 4
    # The shown order: seeded per pair, the same at each start, not the same for every pair.
    many = read_pairs(_jsonl(tmp_path / "many.jsonl", _pairs(40)))
    assert [left_of(0, p) for p in many] == [left_of(0, p) for p in read_pairs(tmp_path / "many.jsonl")]
    assert 10 < sum(left_of(0, p) for p in many) < 30
    bad = {"three": ({"prompt": "p", "completions": ["a", "b", "c"]}, "exactly two completions"),
           "keys": ({"prompt": "p", "answer": "a"}, "no 'completions' or 'chosen'/'rejected'"),
           "number": ({"prompt": "p", "chosen": 3, "rejected": "b"}, "first completion is a int"),
           "list": (["p", "a", "b"], "must be a JSON object")}
    for name, (row, expected) in bad.items():
        with pytest.raises(LabelError, match=expected):
            read_pairs(_jsonl(tmp_path / f"{name}.jsonl", [rows[0], row]))
    (tmp_path / "torn.jsonl").write_text(json.dumps(rows[0]) + "\n{\"prompt\": \n")
    with pytest.raises(LabelError, match=r"torn.jsonl, line 2: not JSON"):
        read_pairs(tmp_path / "torn.jsonl")
    for path, expected in ((tmp_path / "none.jsonl", "does not exist"), (tmp_path, "is a folder"),
                           (_jsonl(tmp_path / "empty.jsonl", []), "holds no pairs")):
        with pytest.raises(LabelError, match=expected):
            read_pairs(path)


def test_every_choice_is_kept_and_a_new_start_continues_at_the_first_unlabelled_pair(tmp_path):
    pairs = read_pairs(_jsonl(tmp_path / "in.jsonl", _pairs(5)))
    out = tmp_path / "prefs.jsonl"
    store = Store(out, pairs, seed=3)
    assert not out.exists() and not choices_path(out).exists()  # checked, nothing written yet
    store.start()
    assert store.next_pair() == pairs[0] and _rows(out) == [] and choices_path(out) == tmp_path / "prefs.choices.jsonl"
    for pair, choice in zip(pairs, ("A", "B", "tie", "A")):
        store.record(pair.key, choice)
    store.record(pairs[0].key, "B")  # a second tab: the last choice counts
    assert [r["choice"] for r in _rows(choices_path(out))] == ["A", "B", "tie", "A", "B"]

    def pref(pair, chosen_is_shown_first):  # by hand: A is the completion shown first (left_of)
        left = left_of(3, pair)
        chosen = left if chosen_is_shown_first else 1 - left
        return {"prompt": pair.prompt, "chosen": pair.completions[chosen], "rejected": pair.completions[1 - chosen]}

    expected = [pref(pairs[0], False), pref(pairs[1], False), pref(pairs[3], True)]
    assert _rows(out) == expected  # the tie stays out of TRL's file
    # A kill while a line was half written: that choice was never shown as made; the rest are kept.
    with open(choices_path(out), "a") as f:
        f.write('{"pair": 4, "key": "')
    again = Store(out, pairs, seed=3)
    assert again.next_pair() == pairs[4] and len(again.made) == 4 and _rows(out) == expected
    assert len(_rows(choices_path(out))) == 5
    # Choices of another input, and an OUTPUT this command did not write, are refused.
    other = read_pairs(_jsonl(tmp_path / "other.jsonl", _pairs(2)[::-1] + [{"chosen": "c", "rejected": "d"}]))
    with pytest.raises(LabelError, match=r"line 3: a choice for a pair the input does not hold"):
        Store(out, other, seed=3)
    _jsonl(tmp_path / "mine.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(LabelError, match="did not write it: choose another output"):
        Store(tmp_path / "mine.jsonl", pairs, seed=3)
    assert _rows(tmp_path / "mine.jsonl") == [{"prompt": "p", "chosen": "a", "rejected": "b"}]


def test_the_preference_file_is_what_rlhf_app_rm_reads(tmp_path):
    from rlhf_app.config import load_config
    from rlhf_app.stages.data import load

    pairs = read_pairs(_jsonl(tmp_path / "in.jsonl", _pairs(6)))
    store = Store(tmp_path / "prefs.jsonl", pairs, seed=0)
    store.start()
    for pair, choice in zip(pairs, "ABABAB"):
        store.record(pair.key, choice)
    cfg = load_config(["recipe=tiny", f"rm.dataset={tmp_path / 'prefs.jsonl'}", "rm.eval_fraction=0.5"], stage="rm")
    train, held, conversational = load(cfg, "rm", tokenizer=None)
    assert len(train) + len(held) == 6 and not conversational
    assert set(train.column_names) == {"prompt", "chosen", "rejected"}


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["label", *map(str, argv)])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_bad_inputs_outputs_and_ports_are_one_line_before_serving(tmp_path, capsys):
    good = _jsonl(tmp_path / "in.jsonl", _pairs(2))
    assert "does not exist" in _error([tmp_path / "nope.jsonl", tmp_path / "out.jsonl"], capsys)
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert "bad.jsonl, line 1: not JSON" in _error([tmp_path / "bad.jsonl", tmp_path / "out.jsonl"], capsys)
    assert "the folder" in _error([good, tmp_path / "no" / "out.jsonl"], capsys)
    assert "is a folder" in _error([good, tmp_path], capsys)
    (tmp_path / "file").write_text("")
    assert "does not exist" in _error([good, tmp_path / "file" / "out.jsonl"], capsys)
    assert "is the INPUT" in _error([good, good], capsys)
    assert "usage: rlhf-app label INPUT OUTPUT" in _error([good], capsys)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in _error([good, tmp_path / "out.jsonl", "--port", port], capsys)
    assert not (tmp_path / "out.jsonl").exists()  # nothing written before every check passed


def test_without_gradio_the_page_names_its_extra(tmp_path, capsys, monkeypatch):
    from rlhf_app import extras

    monkeypatch.setattr(extras, "installed", lambda module: module != "gradio")
    message = _error([_jsonl(tmp_path / "in.jsonl", _pairs(2)), tmp_path / "out.jsonl", "--port", _free_port()], capsys)
    assert "needs the gradio package: pip install -e .[label]" in message
    assert not (tmp_path / "out.jsonl").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(*argv):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_app", "label", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = wait_for_line(read_lines(proc), r"labelling page: (http://\S+)").group(1)
    return proc, url


SHOWN = ("document.querySelector('#label-prompt textarea').value", "document.querySelector('#label-left textarea').value",
         "document.querySelector('#label-right textarea').value")
PROGRESS = "document.querySelector('#label-progress').innerText"


def _label(browser, how, what, done, total):
    """Make one choice as a person does (a click or a key) on the pair shown; return (prompt, A, B, choice)
    once the page shows the next pair, which it does only after the choice is on disk."""
    browser.wait_for(f"{PROGRESS}.includes('{done} of {total}') && {SHOWN[0]}")
    prompt, a, b = (browser.evaluate(expr) for expr in SHOWN)
    if how == "click":
        browser.click(f"#label-{what}")
    else:
        browser.press(what)
    after = f"'{done + 1} of {total}'" if done + 1 < total else f"'All {total} pairs labelled'"
    browser.wait_for(f"{PROGRESS}.includes({after})")
    return prompt, a, b, {"a": "A", "b": "B", "t": "tie", "s": "skip"}.get(what, what)


def _expected(made):
    out = []
    for prompt, a, b, choice in sorted(made):
        if choice in ("A", "B"):
            out.append({"prompt": prompt, "chosen": a if choice == "A" else b, "rejected": b if choice == "A" else a})
    return out


@pytest.mark.slow  # a browser and two servers
def test_a_person_labels_in_chromium_through_a_killed_and_restarted_server(tmp_path):
    assert chromium_path(), "needs Chromium: make test installs it (apt-get install chromium), or set CHROMIUM=path"
    total, port = 6, _free_port()
    source, out = _jsonl(tmp_path / "pairs.jsonl", _pairs(total)), tmp_path / "prefs.jsonl"
    browser, server = Browser(tmp_path / "chromium"), None
    try:
        server, url = _serve(source, out, "--port", port, "--seed", 1)
        assert url == f"http://127.0.0.1:{port}"
        browser.open(url)
        made = [_label(browser, how, what, done, total)
                for done, (how, what) in enumerate((("click", "A"), ("key", "b"), ("click", "tie")))]
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert len(_rows(choices_path(out))) == 3 and _rows(out) == _expected(made)
        # Restarted: the page (reloaded) continues at the first unlabelled pair.
        server, url = _serve(source, out, "--port", port, "--seed", 1)
        browser.open(url)
        assert browser.wait_for(f"{PROGRESS}.includes('3 of {total}') && {SHOWN[0]}") and \
            browser.evaluate(SHOWN[0]) == "prompt 3"
        made += [_label(browser, how, what, done, total)
                 for done, (how, what) in enumerate((("key", "s"), ("click", "B"), ("key", "a")), start=3)]
        assert browser.evaluate("document.querySelector('#label-A').disabled")
    finally:
        browser.close()
        if server:
            server.kill()
            server.wait()
    choices = _rows(choices_path(out))
    assert [(c["pair"], c["choice"]) for c in choices] == [(i, m[3]) for i, m in enumerate(made)]
    assert [m[0] for m in made] == [f"prompt {i}" for i in range(total)]
    # What the page showed as A is the completion the file says was shown first; both orders occurred.
    pairs = read_pairs(source)
    assert [m[1] for m in made] == [p.completions[c["left"]] for p, c in zip(pairs, choices)]
    assert {c["left"] for c in choices} == {0, 1}
    assert _rows(out) == _expected(made) and len(_rows(out)) == 4

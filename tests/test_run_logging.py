"""What a run logs: every sample_every updates a rich console table of prompt / completion / score
(TRL's log_completions), the same rows samples.jsonl records, off with log_completions=false; metrics
to the trackers every logging_steps updates while metrics.jsonl keeps every update."""

import json

LOGGED = ("ppo.total_episodes=96", "eval_before_after=false", "sample_every=2")  # 3 updates, a table at 2


def test_table_every_sample_every_updates_with_the_logged_rows(tmp_path, train_tiny, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that rich wraps no cell
    out, _ = train_tiny(tmp_path / "run", *LOGGED, "--num_completions_to_print", "3", "--report_to", "tensorboard",
                        "--logging_steps", "2")
    printed = capsys.readouterr().out
    # logging_steps=2: the tracker got update 2 only; metrics.jsonl has all 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("objective/scores")] == [2]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # 3 updates, sample_every=2: one table, at update 2, headed by the reward's name
    assert printed.count("Step 2") == 1 and "Step 1" not in printed and "Step 3" not in printed
    assert "┃ Prompt" in printed and "┃ Completion" in printed and "toy ┃" in printed
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {2}
    shown = [line for line in printed.splitlines() if line.count("│") >= 4]  # the table's body rows
    assert len(shown) == 3
    for row, line in zip(rows[:3], shown):
        cells = [c.strip() for c in line.split("│")[2:-2]]
        assert cells == [row["prompt"].strip(), row["completion"].strip(), f"{row['score']:.2f}"]


def test_log_completions_false_prints_no_table(tmp_path, train_tiny, capsys):
    out, _ = train_tiny(tmp_path / "run", *LOGGED, "log_completions=false")
    assert "Step 2" not in capsys.readouterr().out
    assert (out / "samples.jsonl").read_text()  # the samples are still recorded


SPOILER = '''
import os, signal

def spoiler(completions, trainer_state, log_metric, log_extra, **kwargs):
    for name, value in (("step", 999), ("episode", -1), ("objective/kl", 5.0), ("lr", 7.0)):
        log_metric(name, value)
    log_extra("step", [999] * len(completions))
    if trainer_state.global_step == 1 and not os.path.exists("{marker}"):  # Ctrl-C once, during update 2
        open("{marker}", "w").close()
        os.kill(os.getpid(), signal.SIGINT)
    return [0.0] * len(completions)
'''


def test_what_a_reward_logs_never_overwrites_the_runs_columns_nor_loses_rows_on_resume(tmp_path, train_tiny):
    import pytest

    from rlhf_app.cli.main import main

    rewards, out = tmp_path / "spoiler.py", tmp_path / "run"
    rewards.write_text(SPOILER.replace("{marker}", str(tmp_path / "interrupted")))
    args = ["ppo.total_episodes=96", "eval_before_after=false", "sample_every=1", f"reward.funcs=[{rewards}:spoiler,toy]"]
    with pytest.raises(SystemExit) as stopped:
        main(["train", "recipe=tiny", f"output_dir={out}", *args])
    assert stopped.value.code == 130
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    train_tiny(out, *args, "resume_from=auto")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["episode"] for r in rows] == [32, 64, 96]
    for row in rows:  # the loop's own values stay; the reward's go under rewards/
        assert row["objective/kl"] != 5.0 and row["lr"] == 3e-3
        assert (row["rewards/step"], row["rewards/episode"], row["rewards/objective/kl"], row["rewards/lr"]) \
            == (999, -1, 5.0, 7.0)
        assert "rewards/spoiler/mean" in row and "rewards/toy/mean" in row  # TRL's names, unchanged
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [1, 2, 3] and {s["rewards/step"] for s in samples} == {999}

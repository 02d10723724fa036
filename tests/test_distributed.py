"""Two CPU processes (gloo DDP) train together: identical weights on both, and the same metrics as
one process holding the whole batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import warm

pytestmark = pytest.mark.slow  # every test launches two processes

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "dist_worker.py")
# `accelerate launch` (its console script: test_accelerate_configs.py) as a module, which warm.run starts pre-imported;
# the processes it starts run their script through warm.RANK.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
# Same tokens per process (no early stop) and deterministic rollouts, so 1 and 2 processes do the same work.
EXACT = ["recipe=tiny", "eval_before_after=false", "ppo.total_episodes=48", "ppo.num_mini_batches=1",
         "ppo.num_ppo_epochs=2", "ppo.do_sample=false", "ppo.stop_token=null"]
COMPARED = ("objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward", "loss/policy_avg",
            "loss/value_avg", "policy/clipfrac_avg", "val/clipfrac_avg", "policy/approxkl_avg", "lr")
TOLERANCE = 1e-4  # float32 sums in another order; measured here: 3.8e-6 over 4 updates
# One two-process run of EXACT for two tests (compared with one process, then resumed from its checkpoint-2):
# 64 episodes / (8 x 1 mini-batch x 2 processes) = 4 updates.
SHARED = [*EXACT, "ppo.total_episodes=64", "ppo.per_device_train_batch_size=8", "save_steps=2"]


def _two_processes(*args: str) -> subprocess.CompletedProcess:
    # `--cpu --num_processes 2` would start ONE process; ACCELERATE_USE_CPU with --multi_gpu gives MULTI_CPU.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), warm.RANK, WORKER, *args]
    env = warm.launcher_env({**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    return warm.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _ranks(out: Path, n: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shared_two(tmp_path_factory) -> Path:
    """SHARED in two processes, launched once for this module: read it, never write into it."""
    out = tmp_path_factory.mktemp("two")
    proc = _two_processes(*SHARED, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_processes_with_tools_end_with_identical_weights_and_gather_the_tool_metrics(tmp_path, tool_model):
    """Tool episodes on both processes (the tool model, tool_fixtures.py, greedy: each episode makes exactly one
    call; "ask nobody" calls a tool that does not exist, a failure). 64 training prompts, half of each kind, are
    one epoch of 2 updates x 2 processes x 16: each prompt once, so the run's failures are 32 only when every
    update's tool metrics add up both processes (the main process alone holds about half)."""
    from tool_fixtures import NOBODY, RIGHT, write_tools

    data, out = tmp_path / "prompts", tmp_path / "run"
    data.mkdir()
    for split, n in (("train", 32), ("test", 2)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [RIGHT, NOBODY] * n))
    proc = _two_processes("recipe=tiny", f"output_dir={out}", f"model.name_or_path={tool_model}", f"data.name={data}",
                          "data.eval_split=test", f"tools=[{write_tools(tmp_path, 'good')}]", "ppo.response_length=96",
                          "ppo.do_sample=false", "ppo.learning_rate=1e-4", "ppo.total_episodes=64",
                          "ppo.per_device_train_batch_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = _ranks(out, 2)
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks), ranks
    assert all(r["num_processes"] == 2 for r in ranks)
    # 64 episodes / (8 x 1 x 2 mini-batches per process x 2 processes) = 2 updates.
    assert [r["step"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    rows = _metrics(out)
    assert len(rows) == 2
    assert [r["tools/calls_per_episode"] for r in rows] == [1.0, 1.0]
    assert sum(r["tools/failures"] for r in rows) == 32
    assert all(r["tools/failure_frequency"] == r["tools/failures"] / 32 for r in rows)
    # The evaluation after training, on every process: its held-out episodes call the tool too.
    after = json.loads((out / "eval.json").read_text())["after"]["samples"]
    assert len(after) == 4 and all(" r " in s["completion"] for s in after)


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, train_tiny, shared_two):
    # One process, in this one: the whole global batch of 16 (the recipe comes from train_tiny).
    one = train_tiny(tmp_path / "one", *SHARED[1:], "ppo.per_device_train_batch_size=16").dir
    assert _ranks(shared_two, 2)[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    rows_one, rows_two = _metrics(one), _metrics(shared_two)
    assert len(rows_one) == len(rows_two) == 4
    worst = max(abs(a[k] - b[k]) for a, b in zip(rows_one, rows_two) for k in COMPARED)
    print(f"largest metric difference between 1 and 2 processes: {worst:.2e}")
    assert worst <= TOLERANCE
    # The runs trained: the metrics moved between the first and last update.
    assert rows_one[-1]["objective/kl"] != rows_one[0]["objective/kl"]


# GRPO groups in two processes with batch-scaled rewards: test_vllm.py's two-process test, in the same launch as
# its per-process vLLM engines (a two-process start costs more than the updates it would run here).


def test_two_processes_save_their_own_optimizer_state_and_resume_exactly(tmp_path, shared_two):
    """Each process writes its optimizer state (sharded under ZeRO/FSDP; here DDP) and reads its own back."""
    import shutil

    straight, resumed, args = shared_two, tmp_path / "resumed", SHARED  # 4 updates
    ckpt = straight / "checkpoint-2"
    assert sorted(p.name for p in ckpt.glob("optimizer_*.pt")) == ["optimizer_0.pt", "optimizer_1.pt"]
    # As if killed after update 4 was logged but before its checkpoint: resume from update 2.
    resumed.mkdir()
    shutil.copytree(ckpt, resumed / ckpt.name)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(straight / name, resumed / name)
    proc = _two_processes(*args, f"output_dir={resumed}", "resume_from=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    rows_a, rows_b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    for a, b in zip(rows_a, rows_b):
        for key in COMPARED:
            assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(a[key])), (a["step"], key)
    assert _ranks(resumed, 2) == _ranks(straight, 2)  # the same final weights on both processes


def test_sft_stage_in_two_processes_writes_a_whole_run_folder_and_its_loss_falls(tmp_path):
    """`accelerate launch` of `rlhf-app sft` (scripts/sft.py, through warm_rank.py) in two CPU processes: one
    config.yaml, one metrics.jsonl written by the main process, the Trainer's checkpoint, final/ and the report;
    the loss falls."""
    rows = [{"prompt": "say a: ", "completion": "a" * (4 + i % 9) + "."} for i in range(64)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    from rlhf_app.assets.registry import resolve

    resolve("asset:tiny")  # built once here, in the test cache both processes read
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), warm.RANK, str(ROOT / "scripts" / "sft.py"),
           "recipe=tiny", f"output_dir={out}", f"sft.dataset={data}", "--max_steps", "8", "--learning_rate", "3e-3",
           "--per_device_train_batch_size", "4"]
    env = warm.launcher_env({**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    proc = warm.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("sft: ") == 2 and proc.stdout.count("saved ") == 1  # each process; final/ once
    rows = _metrics(out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]  # one row per step: the main process alone writes
    # 57 training rows, 2 processes x 4 rows a step: 8 steps are one epoch (one process would be at 8/15)
    assert rows[-1]["epoch"] == pytest.approx(1.0)
    assert json.loads((out / "final" / "trainer_state.json").read_text()) == {"step": 8}
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["train_batch_size"] == 4
    assert (out / "config.yaml").is_file() and (out / "report.html").is_file() and not (out / ".lock").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary folder left

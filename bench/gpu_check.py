"""The GPU check: what users run on a CUDA machine, in <= 8 minutes, figures as JSON.

    .venv/bin/python bench/gpu_check.py [--only STEP,...] [--list] [--budget-s 480] [--peak-tflops X] [--out FILE]
    (bash bench/gpu_check.sh / make gpu-check install the GPU extras first)

Steps (STEPS below), each `accelerate launch --num_processes 1` of `rlhf_app.run.run`: the tiny and a
SmolLM2 recipe in bf16 with the colocated vLLM engine in sleep mode; DeepSpeed ZeRO-2, ZeRO-3 and
FSDP2 on one GPU, each run twice (uninterrupted, and SIGTERM after its first update then
`resume_from=auto`) with the two runs' metrics compared; QLoRA (4-bit base, LoRA); overlapped
rollouts. Per step: s/update, tokens/s, MFU against the chip's dense bf16 peak (gpu_figures.py),
peak GPU memory (torch's and nvidia-smi's), into bench/work/gpu_check.json. Refuses in one line
without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import gpu_figures  # noqa: E402

WORK = BENCH / "work" / "gpu"
CONFIGS = ROOT / "configs" / "accelerate"
BF16_VLLM = ["ppo.bf16=true", "model.dtype=bfloat16", "rollout.engine=vllm", "rollout.vllm_enable_sleep_mode=true",
             "rollout.vllm_gpu_memory_utilization=0.3", "num_threads=0"]
TINY = ["recipe=tiny", "ppo.total_episodes=256"]  # 8 updates of 32 episodes
RESUME = ["recipe=tiny", "ppo.total_episodes=128", "ppo.bf16=true", "save_steps=1", "eval_before_after=false"]  # 4 updates, one checkpoint each
SMOL = ["recipe=imdb-offline", "ppo.total_episodes=160", "ppo.per_device_train_batch_size=16",
        "ppo.gradient_accumulation_steps=1", "ppo.num_mini_batches=2", "eval_before_after=false"]  # SmolLM2-135M, 5 × 32
# name -> accelerate config (None: plain one process), overrides, whether it is run twice for an exact
# resume, its own time limit (s). The overlapped-rollout key is the other half of issue 26: a step whose
# keys this build does not know is reported as skipped, not failed.
STEPS = {
    "tiny-vllm": dict(config=None, args=[*TINY, *BF16_VLLM], resume=False, limit_s=120),
    "smollm2-vllm": dict(config=None, args=[*SMOL, *BF16_VLLM], resume=False, limit_s=180),
    "zero2-resume": dict(config="deepspeed_zero2.yaml", args=RESUME, resume=True, limit_s=150),
    "zero3-resume": dict(config="deepspeed_zero3.yaml", args=RESUME, resume=True, limit_s=150),
    "fsdp2-resume": dict(config="fsdp.yaml", args=RESUME, resume=True, limit_s=150),
    "qlora": dict(config=None, args=[*SMOL, "ppo.total_episodes=96", "model.load_in_4bit=true", "peft.enabled=true",
                                     "ppo.bf16=true", "rollout.engine=hf"], resume=False, limit_s=150),
    # Overlap and sleep mode exclude each other (the engine samples while the update trains).
    "async": dict(config=None, args=[*TINY, *[a for a in BF16_VLLM if "sleep" not in a], "rollout.async=true"],
                  resume=False, limit_s=120),
}
BUDGET_S = 480


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated steps, from: {', '.join(STEPS)}")
    parser.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="steps not started by then are skipped")
    parser.add_argument("--peak-tflops", type=float, help="the chip's dense bf16 peak, when it is not in the table")
    parser.add_argument("--out", default=str(BENCH / "work" / "gpu_check.json"))
    args = parser.parse_args(argv)
    args.steps = list(STEPS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown or not args.steps:
        parser.exit(1, f"error: --only: unknown step {', '.join(unknown) or '(none)'}; steps: {', '.join(STEPS)}\n")
    if args.budget_s <= 0 or (args.peak_tflops is not None and args.peak_tflops <= 0):
        parser.exit(1, "error: --budget-s and --peak-tflops must be > 0\n")
    return args


def command(step: str, out_dir: Path, *extra: str) -> list[str]:
    """The launch of one run of `step` into `out_dir`."""
    spec = STEPS[step]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    if spec["config"]:
        launch += ["--config_file", str(CONFIGS / spec["config"])]
    return [*launch, str(Path(__file__)), "--child", str(out_dir), *spec["args"], *extra]


def cuda_device() -> str:
    """The CUDA device's name; SystemExit with one line when there is none."""
    if shutil.which("nvidia-smi") is None:
        sys.exit("error: no CUDA device (no nvidia-smi on PATH): the GPU check runs on a GPU machine")
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"error: torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda}; "
                 "a CPU build: `make clean`, then bash bench/gpu_check.sh)")
    return torch.cuda.get_device_name(0)


class MemoryPeak:
    """The device's highest memory.used (MiB) seen by nvidia-smi, polled every 0.5 s while inside."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def _poll(self):
        while shutil.which("nvidia-smi") and not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.peak = max(self.peak, int(float(out.stdout.split()[0])))

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def launch(step: str, out_dir: Path, log: Path, limit_s: float, stop_after: int | None = None, *extra: str) -> int:
    """One run; with `stop_after`, SIGTERM to the training process (not its launcher, which would
    forward a second one) once metrics.jsonl holds that many updates: the run saves at the update
    boundary and says so in gpu_check_stopped.json. -> the launcher's exit status (124: over its limit)."""
    with open(log, "a") as sink:
        proc = subprocess.Popen(command(step, out_dir, *extra), stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline, signalled = time.monotonic() + limit_s, False
        while proc.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return 124
            pid_file = out_dir / "gpu_check_worker.pid"
            if stop_after and not signalled and pid_file.is_file() and \
                    gpu_figures.logged_updates(out_dir) >= stop_after:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)  # written before the run's first update
                signalled = True
            time.sleep(0.2)
        return proc.returncode


def run_step(step: str, peak: float | None, limit_s: float) -> dict:
    spec, base = STEPS[step], WORK / step
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log, started = base / "log.txt", time.monotonic()
    with MemoryPeak() as memory:
        rc = launch(step, base / "run", log, limit_s)
        row = {"step": step, "rc": rc, "log": str(log)}
        if spec["resume"] and rc == 0:
            left = limit_s - (time.monotonic() - started)
            launch(step, base / "resumed", log, left, 1)
            marker = base / "resumed" / "gpu_check_stopped.json"
            stopped = json.loads(marker.read_text()) if marker.is_file() else None
            rc2 = launch(step, base / "resumed", log, limit_s - (time.monotonic() - started), None,
                         "resume_from=auto") if stopped else None
            row.update(stopped=stopped, resumed_rc=rc2,
                       resume=gpu_figures.metrics_difference(gpu_figures.read_metrics(base / "run"),
                                                             gpu_figures.read_metrics(base / "resumed")))
    child = base / "run" / "gpu_check_child.json"
    info = json.loads(child.read_text()) if child.is_file() else {}
    if info.get("skipped"):
        return {"step": step, "skipped": info["skipped"]}
    row.update(wall_s=round(time.monotonic() - started, 1), device_peak_used_mib=memory.peak, **info)
    if rc == 0 and info:
        row.update(gpu_figures.run_figures(base / "run", info["n_params"], info["epochs"], peak))
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        row["error"] = "over its time limit" if rc == 124 else (tail[0][:300] if tail else f"rc {rc}")
    row["ok"] = rc == 0 and (not spec["resume"] or (bool(row.get("stopped")) and row.get("resumed_rc") == 0
                                                    and row["resume"]["same_rows"]))
    return row


def child(out_dir: str, *overrides: str) -> None:
    """Inside `accelerate launch`: the run, then (main process) its parameter count and torch's peak."""
    import torch

    from rlhf_app.config import ConfigError, load_config
    from rlhf_app.run import run

    out = Path(out_dir)
    try:
        cfg = load_config([*overrides, f"output_dir={out}"])
    except ConfigError as err:
        if "unknown key" not in str(err):
            raise
        out.mkdir(parents=True, exist_ok=True)  # a key this build lacks (rollout.async before it is merged)
        (out / "gpu_check_child.json").write_text(json.dumps({"skipped": str(err)}))
        return
    from rlhf_app.run_dir.signals import Stopped

    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check_worker.pid").write_text(str(os.getpid()))
    try:
        result = run(cfg)
    except Stopped as stop:  # SIGTERM from launch(): a checkpoint at the update boundary
        if main_process:
            (out / "gpu_check_stopped.json").write_text(json.dumps({"signal": stop.signum, "saved": str(stop.path)}))
        sys.exit(128 + stop.signum)
    if main_process:
        params = list(result["model"].policy.parameters())
        # ZeRO-3 leaves each parameter a placeholder with its real size in ds_numel; 4-bit weights are
        # packed two to a byte (transformers' num_parameters counts them whole).
        n_params = sum(p.ds_numel for p in params) if hasattr(params[0], "ds_numel") else \
            result["model"].policy.num_parameters()
        (out / "gpu_check_child.json").write_text(json.dumps({
            "n_params": n_params, "epochs": cfg.ppo.num_ppo_epochs,
            **({"torch_peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
                "torch_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
               if torch.cuda.is_available() else {})}))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:  # gpu_check.py --child OUT_DIR key=value ..., under accelerate launch
        return child(*argv[1:])
    args = parse_args(argv)
    if args.list:
        for step in args.steps:
            print(f"{step}: {' '.join(command(step, WORK / step / 'run'))}")
        return
    device = cuda_device()
    peak = args.peak_tflops or gpu_figures.peak_tflops(device)
    started, rows = time.monotonic(), []
    result = {"device": device, "peak_bf16_tflops": peak, "budget_s": args.budget_s, "steps": rows}
    for step in args.steps:
        left = args.budget_s - (time.monotonic() - started)
        if left < 30:
            rows.append({"step": step, "skipped": f"the {args.budget_s:.0f} s budget is spent"})
            continue
        rows.append(run_step(step, peak, min(STEPS[step]["limit_s"], left)))
        print(json.dumps(rows[-1]), flush=True)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=1, default=str))
    print(f"wrote {gpu_figures.write_json(result, Path(args.out))}")


if __name__ == "__main__":
    main(sys.argv[1:])

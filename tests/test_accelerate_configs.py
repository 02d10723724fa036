"""Every config in configs/accelerate parses with accelerate's own classes, passes its launcher's
validation, builds its DeepSpeed / FSDP plugin, and leaves batch sizes to the recipe.

DeepSpeed and FSDP cannot train on these CPU machines; what is checked here is everything short of
that. The MULTI_CPU config is run for real: two gloo processes.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from rlhf_app.config import available_recipes, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {"multi_cpu.yaml": DistributedType.MULTI_GPU, "multi_gpu.yaml": DistributedType.MULTI_GPU,
            "deepspeed_zero2.yaml": DistributedType.DEEPSPEED, "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
            "fsdp.yaml": DistributedType.FSDP}
ZERO = {"deepspeed_zero2.yaml": 2, "deepspeed_zero3.yaml": 3}


def launch_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file NAME scripts/train.py` gives each process."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "scripts/train.py", "recipe=tiny"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_every_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_passes_the_launcher(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig) and config.distributed_type == EXPECTED[name]
    assert config.num_processes >= 2 and config.num_machines == 1
    env = launch_env(name)
    assert env["ACCELERATE_MIXED_PRECISION"] == ("no" if name == "multi_cpu.yaml" else "bf16")
    if name in ZERO:
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(ZERO[name])
        assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env  # the recipe's ppo.* decides
    if name == "fsdp.yaml":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"


def deepspeed_plugin(name: str, monkeypatch) -> DeepSpeedPlugin:
    for key, value in launch_env(name).items():
        monkeypatch.setenv(key, value)
    return DeepSpeedPlugin()


@pytest.mark.parametrize("name", sorted(ZERO))
@pytest.mark.parametrize("recipe", available_recipes())
def test_deepspeed_batch_sizes_come_from_the_recipe(name, recipe, monkeypatch):
    plugin = deepspeed_plugin(name, monkeypatch)
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == ZERO[name] and ds["zero_optimization"]["stage"] == ZERO[name]
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        assert ds[key] == "auto", key
    if name == "deepspeed_zero3.yaml":
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # Fill the "auto" values as Accelerator.prepare does, from the recipe and the config's process count.
    ppo = load_config([f"recipe={recipe}"]).ppo
    world = load_config_from_file(str(CONFIGS / name)).num_processes
    micro, accumulation = ppo.per_device_train_batch_size, ppo.gradient_accumulation_steps
    plugin.deepspeed_config_process(must_match=True, train_micro_batch_size_per_gpu=micro,
                                    gradient_accumulation_steps=accumulation,
                                    train_batch_size=micro * accumulation * world, gradient_clipping=ppo.max_grad_norm)
    # One optimizer step sees train_batch_size episodes; an update takes num_mini_batches steps.
    assert ds["train_batch_size"] * ppo.num_mini_batches == ppo.local_batch_size * world
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError:
        return  # optional: with `DS_BUILD_OPS=0 pip install deepspeed`, DeepSpeed checks the whole config too
    # Outside a process group DeepSpeed counts one process: check the same config at world size 1.
    single = json.loads(json.dumps({**ds, "train_batch_size": micro * accumulation}).replace("Infinity", "1e9"))
    checked = DeepSpeedConfig(single)
    assert checked.zero_optimization_stage == ZERO[name]
    assert (checked.train_micro_batch_size_per_gpu, checked.gradient_accumulation_steps) == (micro, accumulation)


def test_fsdp_plugin_shards_per_transformer_block(monkeypatch, tmp_path):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import AutoModelForCausalLM

    from rlhf_app.assets.registry import build_tiny

    for key, value in launch_env("fsdp.yaml").items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and plugin.cpu_ram_efficient_loading is False
    build_tiny(tmp_path / "tiny")
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    wrap = fsdp2_prepare_auto_wrap_policy(plugin, policy)
    wrapped = [type(m).__name__ for m in policy.modules() if wrap(m)]
    assert wrapped == ["GPT2Block", "GPT2Block"]  # one shard group per layer of the 2-layer model


def test_fsdp_finds_the_blocks_inside_the_policy_and_value_wrapper(monkeypatch, tmp_path):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import AutoModelForCausalLM

    from rlhf_app.assets.registry import build_tiny
    from rlhf_app.models.policy import PolicyAndValue

    for key, value in launch_env("fsdp.yaml").items():
        monkeypatch.setenv(key, value)
    build_tiny(tmp_path / "tiny")
    model = PolicyAndValue(AutoModelForCausalLM.from_pretrained(tmp_path / "tiny"))
    wrap = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
    assert [type(m).__name__ for m in model.modules() if wrap(m)] == ["GPT2Block", "GPT2Block"]


# Accelerator(), not PartialState(): only AcceleratorState reads ACCELERATE_USE_CPU.
PROBE = """
import json
import pathlib
import sys
import torch
from accelerate import Accelerator
state = Accelerator().state
total = torch.tensor([state.process_index + 1.0])
torch.distributed.all_reduce(total)
# One file per process: two processes printing to one stdout can interleave their lines.
out = pathlib.Path(sys.argv[1]) / f"rank{state.process_index}.json"
out.write_text(json.dumps({"type": str(state.distributed_type), "n": state.num_processes, "sum": total.item()}))
# Close gloo before exit: a process leaving with the group open can abort ("terminate called ...").
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # two processes
def test_multi_cpu_config_runs_two_gloo_processes(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).parent / "accelerate"
    with socket.socket() as sock:  # a free port: the default 29500 may be taken by another run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(CONFIGS / "multi_cpu.yaml"),
                           "--main_process_port", str(port), str(tmp_path / "probe.py"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert rows == [{"type": "DistributedType.MULTI_CPU", "n": 2, "sum": 3.0}] * 2


FAKES = {"srun": 'while [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=1 exec "$@"',  # as on the 2nd node
         # A large allocation: 10,000 names, more than a pipe holds, so a reader that stops early gets SIGPIPE.
         "scontrol": "printf 'node-a\\nnode-b\\n'; for i in $(seq 3 10000); do echo node-$i; done",
         "accelerate": 'printf "%s\\n" "$@" > "$RECORD"'}


def test_slurm_script_launches_every_node_into_one_job(tmp_path, monkeypatch):
    """Run the sbatch script with stand-ins for srun/scontrol/accelerate; feed what it passes to accelerate's launcher."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(tmp_path / "args"),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "77",
           "SLURM_SUBMIT_DIR": str(tmp_path)}  # no .venv there: the stand-ins stay first on PATH
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"), "ppo.total_episodes=64"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "args").read_text().splitlines()
    assert argv[0] == "launch"
    monkeypatch.chdir(ROOT)  # the config path is relative to the submit folder
    args = launch_command_parser().parse_args(argv[1:])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed and defaults.deepspeed_config["zero_stage"] == 2
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    prepare_deepspeed_cmd_env(args)  # fills the torchrun arguments of this node
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("static", "node-a:29500")
    assert args.training_script == "scripts/train.py"
    assert args.training_script_args == ["recipe=gsm8k", "output_dir=runs/gsm8k-77", "save_steps=50",
                                         "resume_from=auto", "ppo.total_episodes=64"]
    script = (ROOT / "scripts" / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --signal=TERM@" in script and "#SBATCH --requeue" in script

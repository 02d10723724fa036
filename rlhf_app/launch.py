"""The processes of a training run: the Accelerator started with its precision, the run folder's
config.yaml and the trackers; and ended in an order that can neither abort nor hang at exit."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rlhf_app import preflight
from rlhf_app.config import TrainConfig, flat_keys, to_yaml


def tracker_config(cfg: TrainConfig) -> dict:
    """The config as the trackers accept it: {"ppo.kl_coef": 0.05, "report_to": "['none']", ...},
    every value a scalar (lists as their text). It holds no secrets: none is ever in a config."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
            for k, v in flat_keys(asdict(cfg)).items()}


def start(cfg: TrainConfig):
    """The Accelerator for `cfg` (ppo.bf16/fp16, gradient accumulation, trackers), with config.yaml
    written into the run folder by the main process and the trackers started inside that folder."""
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    precision = preflight.mixed_precision(cfg.ppo, cuda, cuda and torch.cuda.is_bf16_supported())
    report_to = [r for r in cfg.report_to if r != "none"]
    accelerator = Accelerator(gradient_accumulation_steps=cfg.ppo.gradient_accumulation_steps,
                              mixed_precision=precision, log_with=report_to or None, project_dir=cfg.output_dir)
    if accelerator.state.deepspeed_plugin is not None and cfg.ppo.max_tokens_per_micro_batch is not None:
        raise preflight.PreflightError("ppo.max_tokens_per_micro_batch varies the number of micro-batches, which "
                                       "DeepSpeed fixes: unset it, or use DDP/FSDP")
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
    accelerator.init_trackers("rlhf_app", config=tracker_config(cfg),
                              init_kwargs={"wandb": {"dir": str(out), "name": cfg.run_name or out.name},
                                           "trackio": {"name": cfg.run_name or out.name}})
    return accelerator


def end(accelerator) -> None:
    """Close the trackers and the process group in an order that can neither abort nor hang at exit.

    A process exiting with the group still open can abort ("terminate called ..."), and
    `end_training` destroys it. But DDP's reducer holds the group too: collected after that, it
    destroys the gloo group with the GIL held while a gloo worker thread waits for the GIL to free
    the Python tensors of the last collectives (a deadlock seen in the 2-process tests, py-spy).
    So, with the caller's reference to the wrapped model already dropped: free the accelerator's,
    collect the cycles, two barriers (the second holds no Python tensors), then end.
    """
    import gc

    import torch

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        accelerator.free_memory()  # drops the accelerator's references to the prepared model
        gc.collect()  # and the reference cycles that would keep its reducer alive
        accelerator.wait_for_everyone()
        accelerator.wait_for_everyone()
    accelerator.end_training()  # trackers; destroys the process group (unless fork-launched)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

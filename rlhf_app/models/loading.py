"""from_pretrained keyword arguments from `cfg.model`: dtype, revision, attention, `init_kwargs`, and
bitsandbytes 4/8-bit weights for QLoRA (with `peft.enabled`), checked before any model loads.

The quantization config comes from TRL's own helper (`get_quantization_config` on a `trl.ModelConfig`
holding TRL's field names), so it is built exactly as TRL's scripts build it.
"""

from __future__ import annotations

import importlib.util


def quantization_problem(cfg) -> str | None:
    """One line saying why `model.load_in_4bit/8bit` cannot work here (no bitsandbytes, no CUDA GPU), else None."""
    m = cfg.model
    bits = "load_in_4bit" if m.load_in_4bit else "load_in_8bit" if m.load_in_8bit else None
    if bits is None:
        return None
    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install -e .[qlora])")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (bitsandbytes' quantized kernels)")
    if not missing:
        return None
    return (f"model.{bits}=true needs {' and '.join(missing)}; without them, train LoRA adapters on the "
            f"{m.dtype} weights: drop model.{bits} and keep peft.enabled=true")


def quantization_config(cfg):
    """transformers' BitsAndBytesConfig for `model.load_in_4bit/8bit`, built by TRL's helper; None without them."""
    m = cfg.model
    if not (m.load_in_4bit or m.load_in_8bit):
        return None
    from trl import ModelConfig
    from trl.trainer.utils import get_quantization_config

    return get_quantization_config(ModelConfig(
        model_name_or_path=m.name_or_path, dtype=m.dtype, load_in_4bit=m.load_in_4bit, load_in_8bit=m.load_in_8bit,
        bnb_4bit_quant_type=m.bnb_4bit_quant_type, use_bnb_nested_quant=m.use_bnb_nested_quant, use_peft=True))


def from_pretrained_kwargs(cfg) -> dict:
    """Keyword arguments every from_pretrained of the run's models gets (policy, separate critic)."""
    import torch

    m = cfg.model
    kwargs = dict(revision=m.revision, dtype=getattr(torch, m.dtype), trust_remote_code=m.trust_remote_code,
                  **m.init_kwargs)
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    quant = quantization_config(cfg)
    if quant is not None:
        from accelerate import PartialState

        # Quantized weights are placed on this process's GPU at load time: they cannot be moved later.
        kwargs.update(quantization_config=quant, device_map={"": PartialState().local_process_index})
    return kwargs

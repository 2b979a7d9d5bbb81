#!/usr/bin/env bash
# The CUDA figures the training and evaluation issues ask for, in one run on a lent GPU machine: train-step time,
# tokens/s and MFU (benchmarks/train_throughput.py) and batched generation tokens/s against transformers on the
# same GPU (benchmarks/generate.py). Run from the repository root there, with the wheels of
# benchmarks/cuda_wheels.txt in .whl/; each figure is also written to OUT_DIR. Not yet run on a GPU: give it a
# whole device call (10 minutes) the first time.
#
#   bash benchmarks/cuda_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/cuda_check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

python3 -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__,
jax.devices())" | tee "$out/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/versions.txt"

# 1. PULSE-7B's widths (CLIP ViT-L/14-336, 4096-wide LM, bf16 on fp32 weights, full remat, frozen tower) with 8 of
#    its 32 decoder layers so that weights, AdamW state and activations fit one GPU; batch 8 x 3072 tokens.
python3 benchmarks/train_throughput.py --config configs/pulse_7b.py --steps 10 \
  --config.model.text.num_layers=8 --config.train.global_batch=8 --config.data.seq_len=3072 \
  | tee "$out/train_pulse7b_8layers.txt"
# 2. The CPU-sized config the demo trains, for scale.
python3 benchmarks/train_throughput.py --config configs/tiny.py --steps 20 | tee "$out/train_tiny.txt"
# 3. Batched greedy generation, the CPU benchmark's model and prompts, both sides on the GPU.
python3 benchmarks/generate.py --batch 8 --new-tokens 128 --repeats 3 --torch-device cuda \
  | tee "$out/generate_batch8.txt"
python3 benchmarks/generate.py --batch 64 --new-tokens 256 --repeats 2 --torch-device cuda \
  | tee "$out/generate_batch64.txt"

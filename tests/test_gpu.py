"""Checks that need an NVIDIA GPU: cuDNN's fused attention (pulse_jax.models.cudnn) against the XLA path.

CI has no GPU, so these are skipped there; benchmarks/cuda_check.sh runs them on a GPU machine, where the test
set-up's JAX_PLATFORMS=cpu default must be overridden:

  JAX_PLATFORMS=cuda python -m pytest tests/test_gpu.py

tests/test_models.py checks, on any machine, the masks these hand the kernel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pulse_jax import parallel, train
from pulse_jax.models.common import causal_attention
from pulse_jax.models.cudnn import cudnn_causal_attention
from tests.train_helpers import first_batches, small_config, small_train_step

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU (JAX_PLATFORMS=cuda)")


def _relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("length, kv_heads", [(129, 2), (1024, 8)])
def test_cudnn_kernel_matches_causal_attention(length, kv_heads):
  """Outputs and gradients of the kernel on bfloat16 inputs against common.causal_attention in float32 on the
  same (bf16-rounded) values, over the real tokens of left- and right-padded rows, with grouped-query heads and an
  odd length; relative errors within bfloat16's precision (1e-2 for outputs, 2e-2 for gradients)."""
  rng = np.random.default_rng(0)
  batch, heads, head_dim = 3, 8, 128
  q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.bfloat16) for _ in range(2))
  valid = np.ones((batch, length), bool)
  valid[1, length - 40:] = False  # right padding (training batches)
  valid[2, :50] = False  # left padding (prompts)
  weights = jnp.asarray(rng.normal(size=q.shape) * valid[:, :, None, None], jnp.float32)  # real tokens only

  def loss(attend, q, k, v):
    return jnp.sum(attend(q, k, v, jnp.asarray(valid)).astype(jnp.float32) * weights)

  got = jax.jit(cudnn_causal_attention)(q, k, v, jnp.asarray(valid))
  got_grads = jax.jit(jax.grad(lambda *x: loss(cudnn_causal_attention, *x), argnums=(0, 1, 2)))(q, k, v)
  with jax.default_matmul_precision("highest"):
    exact = [x.astype(jnp.float32) for x in (q, k, v)]
    want = jax.jit(causal_attention)(*exact, jnp.asarray(valid))
    want_grads = jax.jit(jax.grad(lambda *x: loss(causal_attention, *x), argnums=(0, 1, 2)))(*exact)
  assert got.dtype == jnp.bfloat16 and got.shape == want.shape
  assert _relative_error(np.asarray(got)[valid], np.asarray(want)[valid]) < 1e-2
  for name, g, w in zip("qkv", got_grads, want_grads):
    assert _relative_error(g, w) < 2e-2, name


def test_cudnn_training_follows_xla_attention():
  """Four steps of the small config in bfloat16 compute on one GPU: "auto" compiles the decoder's attention to
  cuDNN's kernel (its custom calls are in the program) and gives the losses of "xla" attention to bf16 accuracy."""
  losses, programs = {}, {}
  for attention in ("auto", "xla"):
    config = small_config("model.dtype=bfloat16", f"model.attention={attention}")
    step_fns = small_train_step(config, (1, 1, 1), "fsdp")
    programs[attention] = step_fns.step.lower(step_fns.abstract_state, step_fns.abstract_batch).compile().as_text()
    mesh = step_fns.abstract_batch["input_ids"].sharding.mesh
    state, losses[attention] = step_fns.init(jnp.int32(0)), []
    for batch in first_batches(config, config.train.steps):
      state, metrics = step_fns.step(state, parallel.global_batch({k: batch[k] for k in train.STEP_INPUTS}, mesh))
      losses[attention].append(float(metrics["loss"]))
  assert "__cudnn$fmha" in programs["auto"] and "__cudnn$fmha" not in programs["xla"]
  np.testing.assert_allclose(losses["auto"], losses["xla"], rtol=2e-2)

"""Causal self-attention through cuDNN's fused flash-attention kernel on NVIDIA GPUs: training, held-out loss and
the prefill of a prompt.

Why: as on TPU (pulse_jax.models.splash), the XLA path (common.causal_attention) materialises every head's float32
score matrix; cuDNN's kernel streams key blocks through on-chip memory with an online softmax and keeps only the
output and a log-sum-exp per query for the backward pass. jax.nn.dot_product_attention(implementation="cudnn")
calls it, and JAX's own partitioning rules for that call shard it over a mesh's rows and heads.

Masking: cuDNN's causal mask plus a boolean mask that hides padding keys, built from the tokens' validity
bool[B, T] (JAX hands it to the kernel as an additive bias), so left-padded prompts (decode) and right-padded
training rows are both exact. The kernel takes bfloat16 / float16 only (PulseConfig refuses "cudnn" with float32
compute), heads of a multiple of 8 up to 128 (cudnn_takes; 256 on Hopper), GPUs from Ampere on, and, with a mask,
even lengths (an odd length is padded by one invalid token).

Cost of the mask: JAX before 0.11 also computes the bias's gradient in the backward pass (unused: JAX 0.11
skips it for a boolean mask), a [B, 1, T, T] array per layer, all-reduced over `tensor` when heads are split.
The H200 figures of benchmarks/README.md were taken with JAX 0.11.2.
"""

import jax
import jax.numpy as jnp

from pulse_jax.errors import ConfigError
from pulse_jax.models.common import running_platform

CUDNN_DTYPES = ("bfloat16", "float16")  # the compute dtypes the kernel takes
CUDNN_MAX_HEAD_DIM = 128  # on every GPU generation JAX runs the kernel on (Hopper takes 256)


def cudnn_takes(dtype: str, head_dim: int) -> bool:
  """Whether the kernel runs heads of `head_dim` at compute `dtype` (what "auto" checks before choosing it)."""
  return dtype in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM


def cudnn_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *,
                           implementation: str = "cudnn") -> jax.Array:
  """Causal attention of real tokens over earlier real tokens, as common.causal_attention computes it.

  Args:
    q: [B, T, N, H] queries; k, v: [B, T, K, H] with N a multiple of K (grouped-query heads are native to the
      kernel: nothing is repeated).
    valid: bool[B, T], True for real tokens. A padding query's own output is meaningless (the loss never reads
      it); a real token never sees a padding key.
    implementation: "cudnn"; "xla" runs the same masks through jax.nn.dot_product_attention's XLA path, which is
      how a CPU tests what is handed to the kernel.

  Returns:
    [B, T, N, H] in q's dtype, scores scaled by 1/sqrt(H).
  """
  platform = running_platform()
  if implementation == "cudnn" and platform != "gpu":
    raise ConfigError(f"model.attention 'cudnn' is an NVIDIA GPU kernel; on {platform} use 'auto' or 'xla'")
  length = q.shape[1]
  if length % 2:
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 1)) + ((0, 0),) * (x.ndim - 2))
    q, k, v, valid = pad(q), pad(k), pad(v), pad(valid)
  mask = jnp.broadcast_to(valid[:, None, None, :], (valid.shape[0], 1, q.shape[1], q.shape[1]))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=implementation)
  return out[:, :length]

"""Building blocks shared by the vision tower, the projector and the decoder.

Every parameter is created with logical axis names (`embed`, `mlp`, `heads`, `kv_heads`, `vocab`, `layers`, ...).
The logical-to-mesh rules live in the training config (pulse_jax.parallel); here the model only says what each
axis means.
"""

import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def activation(name: str):
  """The activation called `name` in transformers' ACT2FN (exact erf GELU for 'gelu', as PyTorch)."""
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unsupported activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


def sharding_context():
  """Eager sharding when a mesh is set (jax.set_mesh), none otherwise.

  Flax shards annotated parameters eagerly at creation and refuses to create them without a mesh; a model built
  outside any mesh (a notebook, a single-device test) simply gets unsharded parameters that still carry their
  logical axes, so it can be sharded later.
  """
  if jax.sharding.get_abstract_mesh().empty:
    return nnx.use_eager_sharding(False)
  return contextlib.nullcontext()


def mesh_platform() -> str | None:
  """The platform ("tpu", "gpu", "cpu") of the mesh in context (jax.sharding.use_abstract_mesh / set_mesh), None
  without one. Not the default backend: an ahead-of-time compile for a TPU topology on a CPU host (pulse-jax
  plan) must pick the TPU's kernels."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or mesh.abstract_device is None else mesh.abstract_device.platform


def running_platform() -> str:
  """The platform this trace runs on: the mesh in context's, else the default backend's (what a kernel checks
  before it runs)."""
  return mesh_platform() or jax.default_backend()


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, use_bias: bool,
          param_dtype, dtype, rngs: nnx.Rngs, std: float) -> nnx.Linear:
  """nnx.Linear whose kernel [in, out] carries logical `axes` (the bias takes the output axis); the kernel starts
  normal(0, std), the bias at zero."""
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
      rngs=rngs)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, block: int = 256) -> jax.Array:
  """Causal attention (query t sees the valid keys s <= t), skipping the blocks above the diagonal.

  Queries are cut into ~`block`-long chunks and chunk [a, e) attends only keys [0, e): the result is exact, and
  the score work (matmuls and the float32 softmax, which dominate long sequences) drops towards half. q: [B, T,
  N, H]; k, v: [B, T, K, H]; valid: bool[B, T], True for real tokens (padding is never attended).
  """
  length = q.shape[1]
  chunks = max(1, min(16, round(length / block)))
  edges = [round(i * length / chunks) for i in range(chunks + 1)]

  def chunk_mask(a, e):
    return (jnp.arange(e)[None, :] <= jnp.arange(a, e)[:, None])[None] & valid[:, None, :e]
  outputs = [attention(q[:, a:e], k[:, :e], v[:, :e], chunk_mask(a, e)) for a, e in zip(edges[:-1], edges[1:])]
  return jnp.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
              kv_heads_first: bool = False) -> jax.Array:
  """Scaled dot-product attention with grouped-query support.

  Args:
    q: [B, T, N, H] queries; k, v: [B, S, K, H] keys/values with N a multiple of K (GQA: each key/value head
      serves G = N / K query heads); [B, K, S, H] with kv_heads_first (the KV cache's layout, which the
      products read without a transpose: on CPU that makes a decode step's attention ~10x faster).
    mask: bool[B, T, S], True where query t may attend key s; None for full attention.

  Returns:
    [B, T, N, H]. Softmax runs in float32 whatever the input dtype; fully masked rows return zeros.

  The G query heads of a group are folded into the query-length axis ([B, K, G*T, H]), so both products are
  batched matmuls with leading batch axes and the keys/values are never repeated per query head.
  """
  batch, q_len, num_heads, head_dim = q.shape
  kv_len, num_kv_heads = (k.shape[2], k.shape[1]) if kv_heads_first else (k.shape[1], k.shape[2])
  kv = "bksh" if kv_heads_first else "bskh"
  groups = num_heads // num_kv_heads
  q = q.reshape(batch, q_len, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q = q.reshape(batch, num_kv_heads, groups * q_len, head_dim)
  scores = jnp.einsum(f"bkxh,{kv}->bkxs", q, k).astype(jnp.float32) * (head_dim**-0.5)
  scores = scores.reshape(batch, num_kv_heads, groups, q_len, kv_len)
  if mask is not None:
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  if mask is not None:
    probs = jnp.where(mask[:, None, None].any(-1, keepdims=True), probs, 0.0)
  probs = probs.reshape(batch, num_kv_heads, groups * q_len, kv_len).astype(v.dtype)
  out = jnp.einsum(f"bkxs,{kv}->bkxh", probs, v).reshape(batch, num_kv_heads, groups, q_len, head_dim)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, num_heads, head_dim)


class LayerNorm(nnx.Module):
  """LayerNorm with HF parameter names (scale/bias), replicated ('norm' axis)."""

  def __init__(self, size: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((size,), param_dtype), out_sharding=("norm",))
    self.bias = nnx.Param(jnp.zeros((size,), param_dtype), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


class RMSNorm(nnx.Module):
  """LLaMA RMSNorm: normalise in float32, cast back, then scale (the order transformers uses)."""

  def __init__(self, size: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((size,), param_dtype), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return self.scale[...].astype(dtype) * y.astype(dtype)


REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def maybe_remat(fn, policy: str):
  """Wraps a layer body (which may take NNX modules) in nnx.remat under the named policy; 'none' leaves it.

  prevent_cse=False because the body runs inside a scan, where CSE across iterations cannot happen anyway.
  """
  if policy == "none":
    return fn
  return nnx.remat(fn, policy=REMAT_POLICIES[policy], prevent_cse=False)

"""Causal self-attention through the TPU splash-attention kernel (jax.experimental.pallas): training, held-out
loss and the prefill of a prompt.

Why: the XLA path (common.causal_attention) materialises every head's float32 score matrix. At PULSE-7B's length
(4096 tokens, 32 heads) that is ~2 GiB per example and layer, stored for the backward pass or recomputed under
remat, and it dominates the step's temporaries (`pulse-jax plan`). Splash attention is a flash-attention kernel:
it streams key blocks through on-chip memory with an online softmax, skips the blocks above the diagonal, and
keeps only the output and a log-sum-exp per query for its backward pass.

`model.attention` picks the implementation (pulse_jax.models.kernels): "auto" runs this kernel when the mesh in
context is made of TPUs; "splash" forces it (on a CPU it runs in Pallas' interpreter: exact and slow, for tests;
GPUs are refused). Full-sequence attention takes it: training, held-out loss, and a prompt's prefill under a mesh
(pulse_jax.decode); a decode step reads its KV cache through XLA.

The kernel works on one example's heads-first [N, T, H] arrays; it is vmapped over the batch and, under a mesh
(jax.sharding.use_abstract_mesh; pulse_jax.train traces its step under its mesh), shard_mapped so that each device
runs it on its own rows (mesh axes "data", "fsdp") and heads ("tensor"), the layout the logical-axis rules of
pulse_jax.parallel give these activations.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from pulse_jax.errors import ConfigError
from pulse_jax.models.common import running_platform

BLOCK = 128  # the kernel's smallest block: sequences are padded to a multiple of it
BATCH_AXES, HEAD_AXIS = ("data", "fsdp"), "tensor"  # pulse_jax.parallel's mesh axes for rows and heads


@functools.lru_cache(maxsize=64)
def _kernel(num_heads: int, length: int, interpret: bool) -> "splash.splash_attention_kernel.SplashAttentionKernel":
  """The causal kernel for `num_heads` heads of `length` (a multiple of BLOCK) tokens, with its block masks.

  Built outside any trace (ensure_compile_time_eval) so that its mask arrays are constants that can be cached
  and shared by every trace of that shape.
  """
  block = next(size for size in (512, 256, BLOCK) if length % size == 0)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * num_heads)
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def _local_attention(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array, *,
                     interpret: bool) -> jax.Array:
  """One device's share: q, k, v [b, n, T, H] (q already scaled), segments int32[b, T] -> [b, n, T, H]."""
  kernel = _kernel(q.shape[1], q.shape[2], interpret)
  return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s)))(q, k, v, segments)


def _partition(mesh, num_heads: int) -> tuple[PartitionSpec, PartitionSpec]:
  """shard_map specs of [B, N, T, H] activations and [B, T] segment ids on `mesh` (batch and heads split)."""
  batch = tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names) or None
  heads = HEAD_AXIS if HEAD_AXIS in mesh.axis_names and num_heads % mesh.shape[HEAD_AXIS] == 0 else None
  return PartitionSpec(batch, heads, None, None), PartitionSpec(batch, None)


def splash_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
  """Causal attention of real tokens over earlier real tokens, as common.causal_attention computes it.

  Args:
    q: [B, T, N, H] queries; k, v: [B, T, K, H] with N a multiple of K (grouped-query: each key/value head is
      repeated for its N / K query heads, as the kernel wants one per query head).
    valid: bool[B, T], True for real tokens. Padding tokens form a segment of their own, so a real token never
      sees one; their own outputs are meaningless (the loss never reads them).

  Returns:
    [B, T, N, H] in q's dtype; scores are scaled by 1/sqrt(H) and the softmax runs in float32 inside the kernel.
  """
  _, length, num_heads, head_dim = q.shape
  groups = num_heads // k.shape[2]
  padded = -(-length // BLOCK) * BLOCK

  def heads_first(x):
    return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, padded - length), (0, 0)))

  q = heads_first(q * jnp.asarray(head_dim**-0.5, q.dtype))
  k, v = (heads_first(jnp.repeat(x, groups, axis=2) if groups > 1 else x) for x in (k, v))
  segments = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, padded - length)))
  mesh = jax.sharding.get_abstract_mesh()
  platform = running_platform()
  if platform not in ("tpu", "cpu"):
    raise ConfigError(f"model.attention 'splash' is a TPU kernel; on {platform} use 'auto' or 'xla'")
  local = functools.partial(_local_attention, interpret=platform != "tpu")
  if not mesh.empty:
    activations, tokens = _partition(mesh, num_heads)
    # check_vma=False: the Pallas call inside types its outputs without the mesh axes they vary over.
    local = jax.shard_map(local, mesh=mesh, in_specs=(activations, activations, activations, tokens),
                          out_specs=activations, check_vma=False)
  out = local(q, k, v, segments)
  return out[:, :, :length].transpose(0, 2, 1, 3)

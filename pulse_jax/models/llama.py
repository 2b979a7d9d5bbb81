"""LLaMA decoder (the Vicuna-7B family) in Flax NNX, with a KV cache.

RMSNorm, rotate-half RoPE (transformers' layout, so HF q/k weights load without permutation), SwiGLU MLP,
grouped-query attention with 1/sqrt(head_dim) inside the softmax, untied lm_head. The decoder layers are stacked
along a leading `layers` axis (nnx.vmap at init, nnx.scan in the forward pass): one compiled layer body whatever
the depth, which keeps a 32-layer 7B compile short.

Attention masks are built here from per-token validity, so callers only say which tokens are real:
  * no cache: query t sees key s iff s <= t and key s is valid (causal + padding), through the XLA path
    (common.causal_attention), the TPU splash kernel or cuDNN's kernel on GPU, as `PulseConfig.attention` says
    (pulse_jax.models.kernels);
  * with a KVCache: the new tokens are written at slots [end, end + T) and query t sees every valid slot up to
    its own. Left-padded prompts therefore decode correctly, with RoPE positions that skip the padding.
"""

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from pulse_jax.models.common import RMSNorm, activation, attention, dense, maybe_remat, sharding_context
from pulse_jax.models.config import PulseConfig, TextConfig
from pulse_jax.models.kernels import causal_attention_for


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for a batch of sequences.

  Attributes:
    k, v: [L, B, K, S, H] per-layer keys (after RoPE) and values; S is the cache capacity. The kv-head axis
      comes before the slots so that attention reads a layer's cache without transposing it.
    valid: bool[B, S], True for slots holding a real (non-padding) token.
    lengths: int32[B], real tokens seen so far per row: the RoPE position of the next token.
    end: int32[], slots filled so far (shared by all rows).
  """
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  lengths: jax.Array
  end: jax.Array

  @classmethod
  def empty(cls, config: TextConfig, batch: int, capacity: int, dtype=jnp.float32) -> "KVCache":
    shape = (config.num_layers, batch, config.num_kv_heads, capacity, config.head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, capacity), bool),
               lengths=jnp.zeros((batch,), jnp.int32), end=jnp.zeros((), jnp.int32))

  @property
  def capacity(self) -> int:
    return self.k.shape[3]


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotate-half rotary embedding. x: [B, T, N, H]; positions: int[B, T]. Angles in float32."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with HF names q_proj / k_proj / v_proj / o_proj (no biases)."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    t = config.text
    kw = dict(use_bias=False, param_dtype=config.jnp_param_dtype, dtype=config.jnp_dtype, rngs=rngs,
              std=t.initializer_range)
    self.num_heads, self.num_kv_heads, self.head_dim, self.rope_theta = (
        t.num_heads, t.num_kv_heads, t.head_dim, t.rope_theta)
    self.implementation, self.dtype = config.attention, config.dtype
    self.q_proj = dense(t.hidden_size, t.num_heads * t.head_dim, ("embed", "heads"), **kw)
    self.k_proj = dense(t.hidden_size, t.num_kv_heads * t.head_dim, ("embed", "kv_heads"), **kw)
    self.v_proj = dense(t.hidden_size, t.num_kv_heads * t.head_dim, ("embed", "kv_heads"), **kw)
    self.o_proj = dense(t.num_heads * t.head_dim, t.hidden_size, ("heads", "embed"), **kw)

  def __call__(self, x, positions, mask, kv=None, end=None, layer=None, prefill=False):
    """x: [B, T, E]; kv: every layer's cached (k, v) [L, B, K, S, H], or None; mask: bool[B, T, S] with a cache,
    else (and for a prefill) bool[B, T], True for real tokens (attention is then causal over them).

    With a cache, this layer (index `layer`) writes its T new keys/values at slots [end, end + T) in place and
    attends over its own slab; a prefill (an empty cache) attends among the new tokens alone instead, as without
    a cache. Returns the output [B, T, E] and the updated (k, v) (None without a cache).
    """
    b, t, _ = x.shape
    q = rope(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim), positions, self.rope_theta)
    k = rope(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim), positions, self.rope_theta)
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    if kv is not None:
      zero = jnp.zeros((), jnp.int32)
      kv = tuple(jax.lax.dynamic_update_slice(cached, new.transpose(0, 2, 1, 3)[None].astype(cached.dtype),
                                              (layer, zero, zero, end, zero)) for cached, new in zip(kv, (k, v)))
    if kv is None or prefill:
      out = causal_attention_for(self.implementation, self.dtype, self.head_dim)(q, k, v, mask)
    else:
      k, v = (jax.lax.dynamic_index_in_dim(cached, layer, keepdims=False).astype(q.dtype) for cached in kv)
      out = attention(q, k, v, mask, kv_heads_first=True)
    return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), kv


class MLP(nnx.Module):
  """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    t = config.text
    kw = dict(use_bias=False, param_dtype=config.jnp_param_dtype, dtype=config.jnp_dtype, rngs=rngs,
              std=t.initializer_range)
    self.act = activation(t.hidden_act)
    self.gate_proj = dense(t.hidden_size, t.intermediate_size, ("embed", "mlp"), **kw)
    self.up_proj = dense(t.hidden_size, t.intermediate_size, ("embed", "mlp"), **kw)
    self.down_proj = dense(t.intermediate_size, t.hidden_size, ("mlp", "embed"), **kw)

  def __call__(self, x):
    return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    t = config.text
    self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, param_dtype=config.jnp_param_dtype, rngs=rngs)
    self.self_attn = Attention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(
        t.hidden_size, t.rms_norm_eps, param_dtype=config.jnp_param_dtype, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x, positions, mask, kv=None, end=None, layer=None, prefill=False):
    attn_out, kv = self.self_attn(self.input_layernorm(x), positions, mask, kv, end, layer, prefill)
    x = x + attn_out
    return x + self.mlp(self.post_attention_layernorm(x)), kv


def _cache_mask(valid: jax.Array, end: jax.Array, new_tokens: int) -> jax.Array:
  """bool[B, T, S]: new token t (in slot end + t) sees the valid slots up to its own; valid: bool[B, S]."""
  query_slot = end + jnp.arange(new_tokens)
  causal = jnp.arange(valid.shape[1])[None, :] <= query_slot[:, None]  # [T, S]
  return causal[None] & valid[:, None, :]


class LlamaModel(nnx.Module):
  """Token embeddings, the stacked decoder layers and the final norm (transformers' LlamaModel)."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    t = config.text
    self.config = config
    self.embed_tokens = nnx.Embed(
        t.vocab_size, t.hidden_size, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(t.initializer_range), ("vocab", "embed")),
        rngs=rngs)

    @nnx.split_rngs(splits=t.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs):
      return DecoderLayer(config, rngs=rngs)

    self.layers = make_layers(rngs)
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, param_dtype=config.jnp_param_dtype, rngs=rngs)

  def __call__(self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, cache: KVCache | None = None, prefill: bool = False):
    """Runs the decoder.

    Args:
      inputs_embeds: [B, T, E].
      attention_mask: bool[B, T], True for real tokens (default: all real).
      positions: int[B, T] RoPE positions (default: count of real tokens before each one, continuing from the
        cache's lengths, so padding never shifts positions).
      cache: a KVCache to extend, or None for a plain full-sequence forward.
      prefill: the cache is empty (its `end` is 0; the caller knows, the trace cannot): the new tokens attend
        among themselves through the full-sequence attention, as without a cache (causal blocks skipped, the
        splash kernel on TPU), rather than over the whole capacity: no [B, N, T, S] scores for a long prompt.

    Returns:
      hidden states [B, T, E] after the final norm, and the updated cache (None without one).
    """
    b, t, _ = inputs_embeds.shape
    attention_mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if positions is None:
      start = jnp.zeros((b,), jnp.int32) if cache is None else cache.lengths
      positions = start[:, None] + jnp.maximum(jnp.cumsum(attention_mask, axis=1, dtype=jnp.int32) - 1, 0)
    x = inputs_embeds.astype(self.config.jnp_dtype)

    if cache is None:
      def body(x, layer):
        return layer(x, positions, attention_mask)[0]
      body = maybe_remat(body, self.config.remat)
      x = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.layers)
      return self.norm(x), None

    valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask, cache.end, axis=1)
    mask = attention_mask if prefill else _cache_mask(valid, cache.end, t)
    # The whole cache rides in the carry and each layer updates its slab in place: scanning over it as inputs
    # and outputs instead would copy every layer's slab in and out at each step (O(cache) work per token).
    def cached_body(carry, layer):
      x, k, v, index = carry
      x, (k, v) = layer(x, positions, mask, (k, v), cache.end, index, prefill)
      return x, k, v, index + 1
    x, k, v, _ = nnx.scan(cached_body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(
        (x, cache.k, cache.v, jnp.zeros((), jnp.int32)), self.layers)
    cache = KVCache(k=k, v=v, valid=valid, lengths=cache.lengths + attention_mask.sum(1, dtype=jnp.int32),
                    end=cache.end + t)
    return self.norm(x), cache


class LlamaForCausalLM(nnx.Module):
  """LlamaModel plus an untied lm_head: logits over the vocabulary."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    with sharding_context():
      t = config.text
      self.model = LlamaModel(config, rngs=rngs)
      self.lm_head = dense(t.hidden_size, t.vocab_size, ("embed", "vocab"), use_bias=False,
                           param_dtype=config.jnp_param_dtype, dtype=config.jnp_dtype, rngs=rngs,
                           std=t.initializer_range)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.model.embed_tokens(input_ids)

  def __call__(self, input_ids=None, attention_mask=None, positions=None, cache=None, *, inputs_embeds=None):
    """Logits float32[B, T, V] (and the updated cache) from input_ids int[B, T] or inputs_embeds [B, T, E]."""
    if inputs_embeds is None:
      inputs_embeds = self.embed(input_ids)
    hidden, cache = self.model(inputs_embeds, attention_mask, positions, cache)
    return self.lm_head(hidden).astype(jnp.float32), cache

"""CLIP ViT vision tower (transformers' CLIPVisionModel) in Flax NNX.

Patch convolution without bias, class embedding, learned absolute positions, pre-LayerNorm ("pre_layrnorm" in
HF), pre-norm encoder layers with quick_gelu MLPs. PULSE reads the hidden state of the second-to-last layer and
drops CLS, so `__call__` runs only the layers that feature needs; the remaining layers' weights (and the post
LayerNorm) are kept so that checkpoints round-trip unchanged.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pulse_jax.models.common import LayerNorm, activation, attention, dense, maybe_remat, sharding_context
from pulse_jax.models.config import PulseConfig


class VisionAttention(nnx.Module):
  """Full (non-causal) multi-head attention with biases: q_proj / k_proj / v_proj / out_proj."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    v = config.vision
    kw = dict(use_bias=True, param_dtype=config.jnp_param_dtype, dtype=config.jnp_dtype, rngs=rngs)
    self.num_heads, self.head_dim = v.num_heads, v.hidden_size // v.num_heads
    std = v.init_stds()
    project_in = lambda: dense(v.hidden_size, v.hidden_size, ("vision_embed", "vision_heads"), std=std["in_proj"],
                               **kw)
    self.q_proj, self.k_proj, self.v_proj = project_in(), project_in(), project_in()
    self.out_proj = dense(v.hidden_size, v.hidden_size, ("vision_heads", "vision_embed"), std=std["out_proj"], **kw)

  def __call__(self, x):
    b, t, e = x.shape
    split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)
    out = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), mask=None)
    return self.out_proj(out.reshape(b, t, e))


class VisionMLP(nnx.Module):
  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    v = config.vision
    kw = dict(use_bias=True, param_dtype=config.jnp_param_dtype, dtype=config.jnp_dtype, rngs=rngs)
    self.act = activation(v.hidden_act)
    std = v.init_stds()
    self.fc1 = dense(v.hidden_size, v.intermediate_size, ("vision_embed", "vision_mlp"), std=std["fc1"], **kw)
    self.fc2 = dense(v.intermediate_size, v.hidden_size, ("vision_mlp", "vision_embed"), std=std["in_proj"], **kw)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nnx.Module):
  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    v = config.vision
    norm = lambda: LayerNorm(v.hidden_size, v.layer_norm_eps, param_dtype=config.jnp_param_dtype, rngs=rngs)
    self.layer_norm1 = norm()
    self.self_attn = VisionAttention(config, rngs=rngs)
    self.layer_norm2 = norm()
    self.mlp = VisionMLP(config, rngs=rngs)

  def __call__(self, x):
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


class PatchEmbedding(nnx.Module):
  """A stride-`patch` convolution without bias, computed as one matmul over flattened patches.

  The kernel keeps the convolution layout [ph, pw, C, E] (HF's conv weight transposed), but non-overlapping
  patches make the convolution a reshape plus a matmul, which is far faster than a strided conv on CPU/GPU.
  """

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    v = config.vision
    self.patch_size, self.dtype = v.patch_size, config.jnp_dtype
    self.kernel = nnx.Param(
        nnx.initializers.normal(v.init_stds()["embedding"])(
            rngs.params(), (v.patch_size, v.patch_size, v.num_channels, v.hidden_size), config.jnp_param_dtype),
        out_sharding=(None, None, None, "vision_embed"))

  def __call__(self, pixel_values):
    """[N, C, H, W] -> [N, (H / p) * (W / p), E], patches in row-major order."""
    n, c, h, w = pixel_values.shape
    p = self.patch_size
    patches = pixel_values.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(n, (h // p) * (w // p), p * p * c).astype(self.dtype)
    return patches @ self.kernel[...].astype(self.dtype).reshape(p * p * c, -1)


class VisionEmbeddings(nnx.Module):
  """Patchify, prepend CLS, add learned positions."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    v = config.vision
    std = v.init_stds()
    self.patch_embedding = PatchEmbedding(config, rngs=rngs)
    self.class_embedding = nnx.Param(
        nnx.initializers.normal(std["class_embedding"])(rngs.params(), (v.hidden_size,), config.jnp_param_dtype),
        out_sharding=("vision_embed",))
    self.position_embedding = nnx.Embed(
        v.patches_per_side**2 + 1, v.hidden_size, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(std["embedding"]), (None, "vision_embed")),
        rngs=rngs)

  def __call__(self, pixel_values):
    """pixel_values: [N, C, H, W] (channels-first, as transformers) -> [N, 1 + P, E]."""
    patches = self.patch_embedding(pixel_values)
    n = patches.shape[0]
    cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (n, 1, patches.shape[-1]))
    x = jnp.concatenate([cls, patches], axis=1)
    return x + self.position_embedding.embedding[...].astype(x.dtype)[None]


class CLIPVisionTower(nnx.Module):
  """Returns the hidden state selected by `config.vision.feature_layer` (CLS dropped under 'default')."""

  def __init__(self, config: PulseConfig, *, rngs: nnx.Rngs):
    with sharding_context():
      v = config.vision
      self.config = config
      self.embeddings = VisionEmbeddings(config, rngs=rngs)
      self.pre_layrnorm = LayerNorm(v.hidden_size, v.layer_norm_eps, param_dtype=config.jnp_param_dtype, rngs=rngs)

      @nnx.split_rngs(splits=v.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_layers(rngs):
        return VisionLayer(config, rngs=rngs)

      self.layers = make_layers(rngs)
      self.post_layernorm = LayerNorm(
          v.hidden_size, v.layer_norm_eps, param_dtype=config.jnp_param_dtype, rngs=rngs)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values float[N, 3, S, S] -> features [N, P, E] (P = 576 for ViT-L/14 at 336 px, CLS dropped)."""
    v = self.config.vision
    x = self.pre_layrnorm(self.embeddings(pixel_values))
    needed = v.layers_needed
    if needed:
      used = nnx.graph.state(self.layers)
      graphdef = nnx.graphdef(self.layers)
      first = nnx.merge(graphdef, jax.tree.map(lambda a: a[:needed], used))
      body = maybe_remat(lambda x, layer: layer(x), self.config.remat)
      x = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, first)
    return x[:, 1:] if v.feature_select == "default" else x

"""PulseModel numerics against transformers (random tiny models, fp32, within 1e-4), KV cache and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

from pulse_jax import parallel  # noqa: E402
from pulse_jax.convert import hf  # noqa: E402
from pulse_jax.models import KVCache, PulseConfig, feature_layout, num_image_tokens  # noqa: E402
from tests.hf_oracle import IMAGE_TOKEN, SPECS, tiny_llava_next, to_numpy  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def pair(request, tmp_path_factory):
  """(transformers model, our PulseModel loaded from its save_pretrained folder, our config), spatial_unpad."""
  theirs = tiny_llava_next(request.param)
  folder = tmp_path_factory.mktemp(request.param.name)
  theirs.save_pretrained(folder)
  ours, config = hf.load(folder)
  return theirs, ours, config


@pytest.fixture(scope="module")
def flat_pair(tmp_path_factory):
  theirs = tiny_llava_next(SPECS[1], seed=1)
  folder = tmp_path_factory.mktemp("flat")
  theirs.save_pretrained(folder)
  ours, config = hf.load(folder, merge_mode="flat")
  return theirs, ours, config


def _prompt(rng, config, image_size, prefix=5, suffix=7):
  """int[T] ids: text, one placeholder per image feature (or none), text. Text ids avoid the image token."""
  n_image = 0 if image_size is None else num_image_tokens(image_size, config)
  text = lambda n: rng.integers(3, IMAGE_TOKEN, n)
  return np.concatenate([text(prefix), np.full(n_image, IMAGE_TOKEN), text(suffix)]).astype(np.int32)


def _pixels(rng, config, batch):
  return rng.normal(size=(batch, config.max_views, 3, 32, 32)).astype(np.float32)


def test_language_model_matches_llama(pair):
  theirs, ours, _ = pair
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 250, (2, 12)).astype(np.int32)
  mask = np.ones((2, 12), np.int32)
  mask[1, 9:] = 0  # right padding, as in training
  with torch.no_grad():
    want = theirs.model.language_model(input_ids=torch.tensor(ids, dtype=torch.long),
                                       attention_mask=torch.tensor(mask)).last_hidden_state
    want = to_numpy(theirs.lm_head(want))
  got, _ = ours.language_model(jnp.asarray(ids), jnp.asarray(mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=ATOL, rtol=0)


def test_vision_tower_matches_clip(pair):
  theirs, ours, config = pair
  pixels = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    hidden = theirs.model.vision_tower(torch.tensor(pixels), output_hidden_states=True).hidden_states
  want = to_numpy(hidden[config.vision.feature_layer])[:, 1:]
  got = ours.vision_tower(jnp.asarray(pixels))
  assert got.shape == (3, 16, 32)
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


def test_text_only_matches_llava_next(pair):
  theirs, ours, config = pair
  rng = np.random.default_rng(2)
  ids = np.stack([_prompt(rng, config, None, 6, 6) for _ in range(2)])
  with torch.no_grad():
    want = to_numpy(theirs(input_ids=torch.tensor(ids, dtype=torch.long)).logits)
  got = ours(jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("image_size", [(30, 70), (70, 30), (50, 47)], ids=["wide", "tall", "square"])
def test_one_image_matches_llava_next(pair, image_size):
  """Each size selects a different anyres grid (1x2, 2x1, 2x2) and a different unpadding."""
  theirs, ours, config = pair
  rng = np.random.default_rng(3)
  ids = _prompt(rng, config, image_size)[None]
  pixels = _pixels(rng, config, 1)
  sizes = np.array([image_size])
  with torch.no_grad():
    want = to_numpy(theirs(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=torch.tensor(pixels),
                           image_sizes=torch.tensor(sizes)).logits)
  got = ours(jnp.asarray(ids), jnp.asarray(pixels), sizes)
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


def test_batch_with_mixed_grids_under_jit(pair):
  """Two images of different grids in one jitted batch, right-padded: the layout carries the per-row shape."""
  theirs, ours, config = pair
  rng = np.random.default_rng(4)
  sizes = np.array([(30, 70), (50, 47)])
  prompts = [_prompt(rng, config, tuple(s)) for s in sizes]
  length = max(map(len, prompts))
  ids = np.zeros((2, length), np.int32)
  mask = np.zeros((2, length), np.int32)
  for row, p in enumerate(prompts):
    ids[row, :len(p)], mask[row, :len(p)] = p, 1
  pixels = _pixels(rng, config, 2)
  forward = nnx.jit(lambda m, i, p, l, a: m(i, p, attention_mask=a, layout=l))
  got = np.asarray(forward(ours, ids, pixels, feature_layout(sizes, config), mask))
  for row, p in enumerate(prompts):
    with torch.no_grad():
      want = to_numpy(theirs(input_ids=torch.tensor(p[None], dtype=torch.long),
                             pixel_values=torch.tensor(pixels[row:row + 1]),
                             image_sizes=torch.tensor(sizes[row:row + 1])).logits)[0]
    np.testing.assert_allclose(got[row, :len(p)], want, atol=ATOL, rtol=0)


def test_flat_mode_matches_hand_assembled_parts(flat_pair):
  """PULSE's flat merge: CLIP -> projector -> [global view, tiles] concatenated -> LLaMA on inputs_embeds."""
  theirs, ours, config = flat_pair
  rng = np.random.default_rng(5)
  image_size = (30, 70)  # 1 x 2 grid: 3 views
  ids = _prompt(rng, config, image_size)
  assert (ids == IMAGE_TOKEN).sum() == 3 * 16
  pixels = _pixels(rng, config, 1)
  with torch.no_grad():
    hidden = theirs.model.vision_tower(torch.tensor(pixels[0, :3]), output_hidden_states=True).hidden_states
    feats = theirs.model.multi_modal_projector(hidden[-2][:, 1:]).reshape(-1, 64)
    embeds = theirs.model.language_model.embed_tokens(torch.tensor(np.where(ids == IMAGE_TOKEN, 0, ids)))
    embeds[torch.tensor(ids == IMAGE_TOKEN)] = feats
    want = to_numpy(theirs.lm_head(theirs.model.language_model(inputs_embeds=embeds[None]).last_hidden_state))
  got = ours(jnp.asarray(ids[None]), jnp.asarray(pixels), np.array([image_size]))
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


def test_placeholder_count_is_checked(pair):
  _, ours, config = pair
  ids = _prompt(np.random.default_rng(6), config, (30, 70))[None]
  pixels = _pixels(np.random.default_rng(6), config, 1)
  with pytest.raises(Exception, match="image placeholder tokens"):
    ours(jnp.asarray(ids[:, :-10]), jnp.asarray(pixels), np.array([(70, 30)]))


def test_kv_cache_greedy_decoding_equals_full_forward(pair):
  """Prefill a left-padded batch with an image, then decode 8 tokens one at a time with the cache; at every step
  the token equals the argmax of a full forward over the whole sequence so far, and so do the logits."""
  _, ours, config = pair
  rng = np.random.default_rng(7)
  sizes = np.array([(30, 70), (70, 30)])
  prompts = [_prompt(rng, config, tuple(sizes[0]), 3, 4), _prompt(rng, config, tuple(sizes[1]), 8, 6)]
  length = max(map(len, prompts))
  ids = np.zeros((2, length), np.int32)
  mask = np.zeros((2, length), bool)
  for row, p in enumerate(prompts):  # left padding: every row's last prompt token sits at the same slot
    ids[row, length - len(p):], mask[row, length - len(p):] = p, True
  pixels, layout = _pixels(rng, config, 2), feature_layout(sizes, config)

  extend = nnx.jit(lambda m, i, c, a, p=None, l=None: m.extend(i, c, p, attention_mask=a, layout=l))
  full = nnx.jit(lambda m, i, p, l, a: m(i, p, attention_mask=a, layout=l))
  cache = KVCache.empty(config.text, batch=2, capacity=length + 8)
  logits, cache = extend(ours, ids, cache, mask, pixels, layout)
  seq, seq_mask = ids, mask
  for step in range(8):
    reference = np.asarray(full(ours, seq, pixels, layout, seq_mask))[:, -1]
    np.testing.assert_allclose(np.asarray(logits)[:, -1], reference, atol=ATOL, rtol=0, err_msg=f"step {step}")
    token = reference.argmax(-1).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(logits)[:, -1].argmax(-1), token)
    seq = np.concatenate([seq, token[:, None]], 1)
    seq_mask = np.concatenate([seq_mask, np.ones((2, 1), bool)], 1)
    logits, cache = extend(ours, token[:, None], cache, np.ones((2, 1), bool))
  assert int(cache.end) == length + 8
  np.testing.assert_array_equal(np.asarray(cache.lengths), [len(p) + 8 for p in prompts])


def test_model_is_sharded_on_a_2x2x2_mesh(pair):
  _, _, config = pair
  mesh = parallel.make_mesh((2, 2, 2))
  model = parallel.create_model(config, mesh, seed=0)
  lm = model.language_model
  q = lm.model.layers.self_attn.q_proj.kernel[...]  # [L, embed, heads]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2)
  embed = lm.model.embed_tokens.embedding[...]  # [vocab, embed]
  assert embed.addressable_shards[0].data.shape == (embed.shape[0] // 2, embed.shape[1] // 2)
  fc1 = model.vision_tower.layers.mlp.fc1.kernel[...]
  assert fc1.addressable_shards[0].data.shape == (fc1.shape[0], fc1.shape[1] // 2, fc1.shape[2] // 2)
  # A sharded forward pass gives the same logits as the unsharded model with the same weights.
  ids = jnp.asarray(np.random.default_rng(8).integers(3, 250, (4, 10)), jnp.int32)
  sharded = nnx.jit(lambda m, i: m(i))(model, ids)
  single = jax.tree.map(lambda a: jax.device_put(a, jax.devices()[0]), nnx.state(model))
  unsharded = nnx.merge(nnx.graphdef(model), single)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(unsharded(ids)), atol=ATOL, rtol=0)


def test_bfloat16_policy(pair):
  """bf16 parameters and compute: parameters stored in bf16, logits close to fp32 ones (bf16 has ~3 digits)."""
  _, ours, config = pair
  bf16 = config.replace(param_dtype="bfloat16", dtype="bfloat16")
  state = jax.tree.map(lambda a: a.astype(jnp.bfloat16), nnx.state(ours))
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: __import__("pulse_jax").models.PulseModel(bf16, rngs=nnx.Rngs(0)))
  nnx.update(model, state)
  assert model.language_model.lm_head.kernel[...].dtype == jnp.bfloat16
  ids = jnp.asarray(np.random.default_rng(9).integers(3, 250, (1, 10)), jnp.int32)
  got, want = model(ids), ours(ids)
  assert got.dtype == jnp.float32
  assert np.abs(np.asarray(got) - np.asarray(want)).max() < 0.1 * np.abs(np.asarray(want)).max()


def test_every_parameter_has_logical_axes(pair):
  _, ours, _ = pair
  for path, variable in nnx.to_flat_state(nnx.state(ours, nnx.Param)):
    axes = variable.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == variable[...].ndim, path


def _rewrite_keys(src, dst, rename):
  """Copies a safetensors checkpoint folder with every tensor key passed through `rename`."""
  from safetensors.numpy import load_file, save_file
  dst.mkdir()
  (dst / "config.json").write_text((src / "config.json").read_text())
  tensors = load_file(str(src / "model.safetensors"))
  save_file({rename(k): v for k, v in tensors.items()}, str(dst / "model.safetensors"))


@pytest.mark.parametrize("layout", ["canonical", "hub_vision_model"])
def test_hf_import_reads_every_key_layout(tmp_path, layout):
  """The legacy layout is covered by the fixtures; here the transformers>=4.52 one and the hub's
  `vision_tower.vision_model.*` spelling give the same parameters."""
  theirs = tiny_llava_next(SPECS[1], seed=2)
  legacy = tmp_path / "legacy"
  theirs.save_pretrained(legacy)
  if layout == "canonical":
    theirs.save_pretrained(tmp_path / "other", save_original_format=False)
  else:
    _rewrite_keys(legacy, tmp_path / "other",
                  lambda k: k.replace("vision_tower.", "vision_tower.vision_model.", 1))
  a, _ = hf.load(legacy)
  b, _ = hf.load(tmp_path / "other")
  for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
    np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))


def test_hf_import_errors_name_the_problem(tmp_path):
  from pulse_jax.errors import ConversionError
  theirs = tiny_llava_next(SPECS[0], seed=3)
  good = tmp_path / "good"
  theirs.save_pretrained(good)
  _rewrite_keys(good, tmp_path / "missing", lambda k: k.replace("layers.1.mlp.up_proj", "layers.1.mlp.upp"))
  with pytest.raises(ConversionError, match=r"layers\.1\.mlp\.up_proj\.weight is missing"):
    hf.load(tmp_path / "missing")
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text((good / "config.json").read_text())
  (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(ConversionError, match="pickle files are never loaded"):
    hf.load(pickled)
  truncated = tmp_path / "truncated"
  truncated.mkdir()
  (truncated / "config.json").write_text((good / "config.json").read_text())
  data = (good / "model.safetensors").read_bytes()
  (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(ConversionError, match="model.safetensors"):
    hf.load(truncated)


@pytest.mark.parametrize("length", [300, 700])
def test_causal_block_skipping_is_exact(length):
  """causal_attention cuts queries into chunks that see only earlier keys; it must equal full attention."""
  from pulse_jax.models.common import attention, causal_attention
  rng = np.random.default_rng(10)
  q = jnp.asarray(rng.normal(size=(2, length, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, length, 2, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, length, 2, 16)), jnp.float32)
  valid = np.ones((2, length), bool)
  valid[1, length - 37:] = False  # right padding
  mask = jnp.tril(jnp.ones((length, length), bool))[None] & jnp.asarray(valid)[:, None, :]
  np.testing.assert_allclose(np.asarray(causal_attention(q, k, v, jnp.asarray(valid), block=128)),
                             np.asarray(attention(q, k, v, mask)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("length, kv_heads", [(130, 2), (256, 4)])
def test_splash_kernel_equals_causal_attention(length, kv_heads):
  """The splash kernel (Pallas' interpreter on CPU) on left- and right-padded rows, grouped-query heads and a
  length padded to its 128-token blocks: what common.causal_attention gives for every real token."""
  from pulse_jax.models.common import causal_attention
  from pulse_jax.models.splash import splash_causal_attention
  rng = np.random.default_rng(11)
  q = jnp.asarray(rng.normal(size=(3, length, 4, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(3, length, kv_heads, 16)), jnp.float32) for _ in range(2))
  valid = np.ones((3, length), bool)
  valid[1, length - 40:] = False  # right padding (training batches)
  valid[2, :50] = False  # left padding (prompts)
  got, want = (np.asarray(f(q, k, v, jnp.asarray(valid))) for f in (splash_causal_attention, causal_attention))
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=0)


def test_splash_attention_is_refused_on_gpus(monkeypatch):
  from pulse_jax.errors import ConfigError
  from pulse_jax.models.splash import splash_causal_attention
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  x = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ConfigError, match="'splash' is a TPU kernel; on gpu use 'auto' or 'xla'"):
    splash_causal_attention(x, x, x, jnp.ones((1, 8), bool))


@pytest.mark.parametrize("length", [129, 256])
def test_cudnn_masks_equal_causal_attention(length):
  """What cudnn_causal_attention hands cuDNN's kernel (causal mask type plus a padding mask, an odd length padded
  by one), run here through jax.nn.dot_product_attention's XLA path: common.causal_attention for every real token
  of left- and right-padded rows with grouped-query heads. tests/test_gpu.py runs the kernel itself."""
  from pulse_jax.models.common import causal_attention
  from pulse_jax.models.cudnn import cudnn_causal_attention
  rng = np.random.default_rng(12)
  q = jnp.asarray(rng.normal(size=(3, length, 4, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(3, length, 2, 16)), jnp.float32) for _ in range(2))
  valid = np.ones((3, length), bool)
  valid[1, length - 40:] = False  # right padding (training batches)
  valid[2, :50] = False  # left padding (prompts)
  got = np.asarray(cudnn_causal_attention(q, k, v, jnp.asarray(valid), implementation="xla"))
  want = np.asarray(causal_attention(q, k, v, jnp.asarray(valid)))
  assert got.shape == want.shape
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=0)


def test_cudnn_attention_is_refused_off_gpus_and_in_float32():
  from pulse_jax.errors import ConfigError
  from pulse_jax.models.cudnn import cudnn_causal_attention
  x = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
  with pytest.raises(ConfigError, match="'cudnn' is an NVIDIA GPU kernel; on cpu use 'auto' or 'xla'"):
    cudnn_causal_attention(x, x, x, jnp.ones((1, 8), bool))
  with pytest.raises(ConfigError, match="'cudnn' needs bfloat16 or float16 compute"):
    PulseConfig(attention="cudnn", dtype="float32")


def test_auto_attention_takes_the_platforms_kernel():
  from pulse_jax.models.kernels import resolve
  assert [resolve("auto", platform, "bfloat16", 128) for platform in ("tpu", "gpu", "cpu", None)] == [
      "splash", "cudnn", "xla", "xla"]
  # cuDNN's kernel takes no float32 and no heads over 128 or of a size not a multiple of 8
  assert [resolve("auto", "gpu", *case) for case in (("float32", 128), ("float16", 256), ("bfloat16", 36))] == [
      "xla"] * 3
  assert resolve("xla", "tpu", "bfloat16", 128) == "xla" and resolve("splash", "gpu", "float32", 64) == "splash"


def test_random_init_follows_transformers():
  """A model built from a config starts as transformers would build it: the tower with CLIPVisionModel's
  width- and depth-scaled scheme, the LM with LlamaForCausalLM's initializer_range, the projector with LLaVA-NeXT's
  (the text initializer_range) and image_newline at width^-1/2. Compared weight by weight through the HF names."""
  from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

  from pulse_jax.models import PulseModel
  vision = CLIPVisionConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                            image_size=64, patch_size=8, initializer_factor=1.5)
  text = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, initializer_range=0.07)
  config = hf.config_from_hf({"model_type": "llava_next", "vision_config": vision.to_dict(),
                              "text_config": text.to_dict(), "image_token_index": 255,
                              "image_grid_pinpoints": [[64, 128], [128, 64]]})
  assert (config.vision.initializer_factor, config.text.initializer_range) == (1.5, 0.07)
  torch.manual_seed(0)
  theirs = {f"model.vision_tower.{name.removeprefix('vision_model.')}": p
            for name, p in CLIPVisionModel(vision).named_parameters()}
  theirs |= {name.replace("model.", "model.language_model.", 1): p
             for name, p in LlamaForCausalLM(text).named_parameters()}
  expected_std = {name: float(torch.std(p.detach())) for name, p in theirs.items()}
  expected_std |= {"model.multi_modal_projector.linear_1.weight": 0.07,
                   "model.multi_modal_projector.linear_2.weight": 0.07, "model.image_newline": 96**-0.5}
  ours = dict(hf.hf_tensors(nnx.to_pure_dict(nnx.state(PulseModel(config, rngs=nnx.Rngs(0))))))
  compared = 0
  for name, value in ours.items():
    if "norm" in name or "layrnorm" in name or name.endswith(".bias"):  # ones and zeros, exactly
      np.testing.assert_array_equal(value, to_numpy(theirs.get(name, torch.zeros(value.shape))), err_msg=name)
      continue
    # Two std estimates from `size` draws each agree within 3 / sqrt(size) (3 sigma of their relative difference).
    want = expected_std[name]
    assert np.std(value) == pytest.approx(want, rel=3 / np.sqrt(value.size)), (name, want)
    compared += 1
  # 6 kernels per tower layer, 7 per LM layer, 3 tower embeddings, token embeddings, lm_head, 2 projector kernels,
  # image_newline
  assert compared == 3 * 6 + 2 * 7 + 3 + 2 + 2 + 1

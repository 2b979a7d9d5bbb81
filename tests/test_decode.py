"""Batched generation (pulse_jax.decode) against step-by-step full forwards, transformers' generate and itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pulse_jax import decode, parallel
from pulse_jax.config import apply_overrides, load_config, model_config
from pulse_jax.errors import ConfigError, DataError
from pulse_jax.models import feature_layout, num_image_tokens

IMAGE_TOKEN, PAD, STEPS = 255, 0, 8
# One image per row, each a different anyres grid: 1x2 (3 views), 2x1 (3 views), 2x2 (5 views).
SIZES = np.array([(30, 70), (70, 30), (50, 47)])


@pytest.fixture(scope="module")
def config():
  """configs/tiny.py shrunk further: 32 px tiles of 8 px patches (16 tokens a view), LM 64 x 2 layers, GQA."""
  cfg = apply_overrides(load_config("configs/tiny.py"), [
      "model.vision.hidden_size=32", "model.vision.intermediate_size=64", "model.vision.num_layers=2",
      "model.vision.image_size=32", "model.vision.patch_size=8", "model.text.vocab_size=256",
      "model.text.hidden_size=64", "model.text.intermediate_size=128", "model.text.num_layers=2",
      "model.text.head_dim=16", f"model.image_token_id={IMAGE_TOKEN}",
      "model.grid_pinpoints=((32, 64), (64, 32), (64, 64))"])
  return model_config(cfg.model)


@pytest.fixture(scope="module")
def model(config):
  return parallel.create_model(config, parallel.make_mesh((1, 1, 1), jax.devices()[:1]), seed=0)


def _prompts(config, text_lengths, seed=0):
  """Rows of text, one placeholder per image feature, text; their pixel values and feature layouts."""
  rng = np.random.default_rng(seed)
  text = lambda n: rng.integers(3, IMAGE_TOKEN, n)
  image = lambda size: np.full(num_image_tokens(tuple(size), config), IMAGE_TOKEN)
  prompts = [np.concatenate([text(4), image(size), text(n)]).astype(np.int32) for size, n in zip(SIZES, text_lengths)]
  pixels = rng.normal(size=(len(prompts), config.max_views, 3, 32, 32)).astype(np.float32)
  return prompts, pixels, feature_layout(SIZES[:len(prompts)], config)


@pytest.fixture(scope="module")
def batch(config):
  prompts, pixels, layout = _prompts(config, (6, 9, 5))
  assert [len(p) for p in prompts] == [58, 61, 89]  # padded to bucket 96
  return prompts, pixels, layout


@pytest.fixture(scope="module")
def reference(model, config, batch):
  """int[B, STEPS] greedy tokens from re-running the whole model on prompt + tokens so far at every step.

  Rows are right-padded to one fixed length (causal attention: later padding cannot change earlier logits), so
  one compiled forward serves every step; the image token is excluded as decode excludes it.
  """
  prompts, pixels, layout = batch
  width = max(map(len, prompts)) + STEPS
  ids = np.full((len(prompts), width), PAD, np.int32)
  for row, p in enumerate(prompts):
    ids[row, :len(p)] = p
  lengths = np.array([len(p) for p in prompts])
  forward = nnx.jit(lambda m, i, p, l, a: m(i, p, attention_mask=a, layout=l))
  out = np.zeros((len(prompts), STEPS), np.int32)
  for step in range(STEPS):
    mask = np.arange(width)[None] < lengths[:, None]
    logits = np.asarray(forward(model, ids, pixels, layout, mask))[np.arange(len(prompts)), lengths - 1]
    logits[:, IMAGE_TOKEN] = -np.inf
    out[:, step] = logits.argmax(-1)
    ids[np.arange(len(prompts)), lengths] = out[:, step]
    lengths += 1
  return out


def _generate(model, config, batch, **kw):
  prompts, pixels, layout = batch
  kw = dict(max_new_tokens=STEPS, eos_id=-1, pad_id=PAD) | kw
  return decode.generate(model, config, prompts, pixels, layout, **kw)


def test_greedy_equals_step_by_step_full_forward(model, config, batch, reference):
  tokens, lengths = _generate(model, config, batch)
  assert tokens.shape == (3, STEPS) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, reference)
  np.testing.assert_array_equal(lengths, [STEPS] * 3)


def test_rows_stop_at_their_own_eos(model, config, batch, reference):
  """eos = the token row 0 produces at step 3: each row ends at its first eos (excluded), pad after it."""
  eos = int(reference[0, 3])
  tokens, lengths = _generate(model, config, batch, eos_id=eos)
  for row in range(3):
    hits = np.flatnonzero(reference[row] == eos)
    want = int(hits[0]) if hits.size else STEPS
    assert lengths[row] == want
    np.testing.assert_array_equal(tokens[row, :want], reference[row, :want])
    assert (tokens[row, want:] == PAD).all()
  assert lengths[0] <= 3 and lengths.min() < STEPS


def test_loop_ends_when_every_row_is_done(model, config, batch, reference):
  """With eos = every row's first token, the while_loop stops after the prefill instead of running 100 steps."""
  prompts, pixels, layout = batch
  rows = [row for row in range(3) if reference[row, 0] == reference[0, 0]]
  ids, mask = decode._left_pad([prompts[r] for r in rows], 128, len(rows), PAD)
  graphdef, params = nnx.split(model)
  sampling = decode.Sampling(max_new_tokens=100, eos_id=int(reference[0, 0]), pad_id=PAD,
                             image_token_id=IMAGE_TOKEN)
  state = decode._generate_batch(graphdef, params, ids, mask, pixels[rows], layout[rows], np.ones(len(rows), bool),
                                 jax.random.key(0), sampling=sampling, mesh=None)
  assert int(state.step) == 1
  np.testing.assert_array_equal(state.lengths, 0)


def test_prompts_in_one_bucket_share_one_compilation(model, config, batch, reference):
  """Batches of different prompt lengths inside one bucket reuse the executable; the padding changes nothing."""
  _generate(model, config, batch)
  compiled = decode._generate_batch._cache_size()
  other = _prompts(config, (20, 1, 12), seed=1)
  assert [len(p) for p in other[0]] == [72, 53, 96]  # bucket 96 again
  _generate(model, config, other)
  prompts, pixels, layout = batch  # a last, smaller batch filled up to the full size: no compilation either
  rows = [0, 2]
  tokens, _ = decode.generate(model, config, [prompts[r] for r in rows], pixels[rows], layout[rows],
                              max_new_tokens=STEPS, eos_id=-1, pad_id=PAD, pad_batch_to=3)
  np.testing.assert_array_equal(tokens, reference[rows])
  assert decode._generate_batch._cache_size() == compiled
  more_padding, _ = _generate(model, config, batch, buckets=(256,))
  np.testing.assert_array_equal(more_padding, reference)


def test_sampling_is_reproducible_and_top_p_to_zero_is_greedy(model, config, batch, reference):
  sample = lambda key, **kw: _generate(model, config, batch, temperature=1.0, rng=jax.random.key(key), **kw)[0]
  first = sample(1)
  np.testing.assert_array_equal(sample(1), first)
  np.testing.assert_array_equal(sample(1, buckets=(256,)), first)  # per-row keys: padding changes nothing
  assert (sample(2) != first).any()
  assert (first != reference).any()  # temperature 1 over a random model is far from greedy
  np.testing.assert_array_equal(sample(3, top_p=1e-6), reference)


def test_a_key_per_row_samples_the_same_row_in_any_batch(model, config, batch):
  """With keys [B], a row's sample depends on its prompt and key only: not on its position, its companions, the
  batch's padding to more rows, or a mesh (evaluation resumes sampled runs on this)."""
  prompts, pixels, layout = batch
  keys = jnp.stack([jax.random.key(k) for k in (7, 8, 9)])
  sample = lambda rows, on=model, **kw: _generate(on, config, ([prompts[r] for r in rows], pixels[rows],
                                                               layout[rows]), temperature=1.0,
                                                   rng=keys[np.array(rows)], **kw)[0]
  together = sample([0, 1, 2])
  np.testing.assert_array_equal(sample([2, 0]), together[[2, 0]])
  np.testing.assert_array_equal(sample([1], pad_batch_to=3), together[[1]])
  mesh = parallel.make_mesh((8, 1, 1))
  np.testing.assert_array_equal(sample([0, 1, 2], on=_sharded(model, mesh), mesh=mesh), together)
  assert (together[0] != together[1]).any()
  with pytest.raises(ValueError, match="2 keys for 3 prompts"):
    _generate(model, config, batch, temperature=1.0, rng=keys[:2])


def test_top_p_keeps_the_smallest_nucleus():
  """probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two tokens, in their 5:3 ratio."""
  rows = 4000
  logits = jnp.tile(jnp.log(jnp.array([0.3, 0.05, 0.5, 0.15])), (rows, 1))
  sampling = decode.Sampling(max_new_tokens=1, eos_id=-1, pad_id=PAD, image_token_id=3, temperature=1.0,
                             top_p=0.7)
  choose = jax.jit(decode._choose, static_argnames="sampling")
  picked = np.asarray(choose(logits, jax.random.key(0), jnp.int32(0), sampling=sampling))
  assert set(np.unique(picked)) == {0, 2}
  assert abs((picked == 2).mean() - 0.5 / 0.8) < 0.03
  unrestricted = decode.Sampling(max_new_tokens=1, eos_id=-1, pad_id=PAD, image_token_id=3, temperature=1.0)
  picked = np.asarray(choose(logits, jax.random.key(0), jnp.int32(0), sampling=unrestricted))
  assert set(np.unique(picked)) == {0, 1, 2}  # token 3 is the image placeholder: never generated


def _sharded(model, mesh):
  """The model's parameters laid out over `mesh` as in training (pulse_jax.parallel.RULES)."""
  graphdef, state = nnx.split(model)
  with nnx.logical_axis_rules(parallel.RULES):
    return nnx.merge(graphdef, jax.device_put(state, nnx.get_named_sharding(state, mesh)))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)], ids=["data8", "data2_fsdp2_tensor2"])
def test_sharded_over_a_mesh_gives_the_same_tokens(model, config, batch, reference, shape):
  """The parameters laid out as in training (pulse_jax.parallel.RULES), 3 rows filled to a multiple of the
  batch shards (8 or 4) and split over them: the tokens match the unsharded run."""
  mesh = parallel.make_mesh(shape)
  sharded = _sharded(model, mesh)
  q = sharded.language_model.model.layers.self_attn.q_proj.kernel[...]
  assert len(q.sharding.device_set) == 8
  tokens, lengths = _generate(sharded, config, batch, mesh=mesh)
  np.testing.assert_array_equal(tokens, reference)
  np.testing.assert_array_equal(lengths, [STEPS] * 3)


def test_splash_prefill_over_a_mesh_gives_the_same_tokens(config, batch, reference):
  """The prompt's attention through the splash kernel (model.attention="splash", Pallas' interpreter here),
  shard_mapped over the (2, 2, 2) mesh's rows and heads, on left-padded prompts: the same tokens."""
  mesh = parallel.make_mesh((2, 2, 2))
  splash_model = parallel.create_model(config.replace(attention="splash"), mesh, seed=0)
  tokens, lengths = _generate(splash_model, config, batch, mesh=mesh)
  np.testing.assert_array_equal(tokens, reference)
  np.testing.assert_array_equal(lengths, [STEPS] * 3)


def test_stream_yields_generate_tokens_with_one_step_compilation(model, config, batch, reference):
  prompts, pixels, layout = batch
  eos = int(reference[0, 5])
  compiled = decode._advance_jit._cache_size()  # other tests (chat, eval) may have compiled other shapes already
  for row in (0, 1):  # 58 and 61 tokens: one bucket (64)
    hits = list(reference[row]).index(eos) if eos in reference[row] else STEPS
    got = decode.stream(model, config, prompts[row], pixels[row], layout[row], max_new_tokens=STEPS, eos_id=eos,
                        pad_id=PAD)
    assert list(got) == list(reference[row, :hits])
  # At most one new step executable for both prompts, not one per token.
  assert decode._advance_jit._cache_size() - compiled <= 1


def test_bad_settings_and_prompts_are_named(model, config, batch):
  with pytest.raises(ConfigError, match="top_p"):
    _generate(model, config, batch, temperature=1.0, top_p=0.0)
  with pytest.raises(ConfigError, match="longer than the largest length bucket 64"):
    _generate(model, config, batch, buckets=(32, 64))
  with pytest.raises(DataError, match="prompt 1 is empty"):
    decode.generate(model, config, [[5, 6], []], max_new_tokens=2, eos_id=2, pad_id=PAD)


def test_greedy_equals_transformers_generate(tmp_path):
  """Same weights in transformers' LlavaNextForConditionalGeneration (spatial_unpad, GQA): our batched,
  left-padded greedy decode equals its generate() run on each prompt alone, eos stop included."""
  torch = pytest.importorskip("torch")
  from pulse_jax.convert import hf
  from tests.hf_oracle import IMAGE_TOKEN as HF_IMAGE_TOKEN, SPECS, tiny_llava_next

  theirs = tiny_llava_next(SPECS[1], seed=4)
  theirs.save_pretrained(tmp_path)
  ours, config = hf.load(tmp_path)
  rng = np.random.default_rng(5)
  prompts = [np.concatenate([rng.integers(3, HF_IMAGE_TOKEN, 5),
                             np.full(num_image_tokens(tuple(size), config), HF_IMAGE_TOKEN),
                             rng.integers(3, HF_IMAGE_TOKEN, n)]).astype(np.int32) for size, n in zip(SIZES, (2, 7, 4))]
  pixels = rng.normal(size=(3, config.max_views, 3, 32, 32)).astype(np.float32)
  steps, eos = 12, 2

  want = []
  for row, p in enumerate(prompts):
    with torch.no_grad():
      out = theirs.generate(input_ids=torch.tensor(p[None], dtype=torch.long),
                            pixel_values=torch.tensor(pixels[row:row + 1]),
                            image_sizes=torch.tensor(SIZES[row:row + 1]), max_new_tokens=steps, do_sample=False,
                            eos_token_id=eos, pad_token_id=PAD, suppress_tokens=[HF_IMAGE_TOKEN])
    new = out[0, len(p):].tolist()
    want.append(new[:new.index(eos)] if eos in new else new)
  tokens, lengths = decode.generate(ours, config, prompts, pixels, feature_layout(SIZES, config),
                                    max_new_tokens=steps, eos_id=eos, pad_id=PAD)
  assert [tokens[row, :lengths[row]].tolist() for row in range(3)] == want

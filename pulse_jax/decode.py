"""Batched KV-cache generation: one prefill, then one jit-compiled lax.while_loop; and a token stream for chat.

`generate` left-pads a batch of prompts to a shared length bucket (so every row's last prompt token sits in the
same cache slot and one `end` index serves all rows), prefills the KV cache with the prompts and their images in
one `PulseModel` pass (whose attention runs among the prompt's tokens alone, as in training: never a [B, heads,
prompt, capacity] score array; under a mesh, the platform's kernel of pulse_jax.models.kernels), then runs the
whole decode as a single `lax.while_loop` inside the same jit: no Python per token, no host sync until the batch is
done. The loop state is an immutable `DecodeState`; each step feeds the previous token, picks the next one (greedy,
or temperature + top-p sampling), and marks a row done at its eos, after which the row emits `pad_id` and its cache
slots stay masked. The loop stops when every row is done or max_new_tokens is reached. `stream` drives the same
prefill and step functions from a Python loop, one token at a time, for interactive chat.

Prompt length buckets. Compiled code depends on the padded prompt length, so lengths are rounded up to one of a
few buckets and batches of similar prompts reuse one executable. `DEFAULT_BUCKETS` are the powers of two from 32
to 16384 and the quarter steps between them (..., 1024, 1280, 1536, 1792, 2048, 2560, ...): padding stays under
a quarter of the prompt (prefill time and cache size grow with the padded length) while each doubling of the
length range adds only four executables. PULSE prompts are dominated by image tokens (576 per view, 3 to 5 views
in flat mode: 1728 to 2880 tokens plus the text), so ECGBench lands in three buckets (2048, 2560, 3072). The
cache capacity is bucket + max_new_tokens.

The model enters jit as (graphdef, state) from `nnx.split` (graphdef static, state a pytree of arrays that keeps
its sharding) and is merged back inside, so the compiled functions are cached per model structure, batch shape,
bucket and sampling settings; the loop body is traced once, never per step.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pulse_jax import parallel
from pulse_jax.errors import ConfigError, DataError
from pulse_jax.models.config import PulseConfig
from pulse_jax.models.llama import KVCache
from pulse_jax.models.llava import PulseModel

# Quarter steps between powers of two: 32, 40, 48, 56, 64, 80, ..., 2048, 2560, 3072, 3584, 4096, ..., 16384.
DEFAULT_BUCKETS: tuple[int, ...] = tuple(2**p + q * 2**(p - 2) for p in range(5, 14) for q in range(4)) + (2**14,)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How tokens are chosen; hashable, so it parameterises the compiled functions.

  Attributes:
    max_new_tokens: tokens generated per row at most (the paper: 1024).
    eos_id: the token that ends a row; it is not part of the output.
    pad_id: written after a row's end, and used to pad prompts.
    image_token_id: never generated (a placeholder fed back would be read as an image feature slot).
    temperature: 0 for greedy decoding (the paper's setting); > 0 divides the logits before sampling.
    top_p: nucleus sampling: only the most probable tokens whose cumulative probability reaches top_p are kept
      (the most probable token always is, so top_p -> 0 is greedy). 1 keeps the whole vocabulary.
  """
  max_new_tokens: int
  eos_id: int
  pad_id: int
  image_token_id: int
  temperature: float = 0.0
  top_p: float = 1.0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@flax.struct.dataclass
class DecodeState:
  """The while_loop carry for a batch of B rows generating up to N tokens.

  Attributes:
    step: int32[], tokens generated so far (the column the next token goes to).
    tokens: int32[B, N], generated tokens; pad_id at and after each row's eos and beyond `step`.
    last: int32[B], the token chosen at the latest step (fed to the model next); pad_id for finished rows.
    lengths: int32[B], generated tokens per row, eos excluded.
    done: bool[B], rows that met eos, reached N tokens, or are batch padding.
    cache: the KV cache of prompts + generated tokens.
    rng: the PRNG key; step and row index are folded in, so a row's samples depend on the key and its index only
      (not on the other rows, the bucket or the batch padding).
  """
  step: jax.Array
  tokens: jax.Array
  last: jax.Array
  lengths: jax.Array
  done: jax.Array
  cache: KVCache
  rng: jax.Array


def bucket_length(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The smallest bucket >= length (the padded prompt length that compiled code is specialised to)."""
  fitting = [b for b in buckets if b >= length]
  if not fitting:
    raise ConfigError(f"a prompt of {length} tokens is longer than the largest length bucket {max(buckets)}")
  return min(fitting)


def _left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, pad_id: int):
  """int32[rows, length] ids and bool[rows, length] mask, prompts right-aligned; extra rows all padding."""
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for row, prompt in enumerate(prompts):
    if len(prompt) == 0:
      raise DataError(f"prompt {row} is empty: generation needs at least one prompt token")
    ids[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = True
  return ids, mask


def _pad_rows(array, rows: int):
  """Zero rows appended up to `rows` (None stays None): fills the batch to a multiple of the mesh's shards."""
  if array is None:
    return None
  array = np.asarray(array)
  return np.concatenate([array, np.zeros((rows - len(array), *array.shape[1:]), array.dtype)])


def _next_token_logits(model: PulseModel, ids, mask, cache: KVCache, pixel_values=None, layout=None, *,
                       prefill: bool = False):
  """Extends the cache with ids [B, T]; float32 logits [B, V] of the token after the last one. prefill: the
  cache is empty (LlamaModel's prefill path).

  Runs the decoder and lm_head separately (rather than model.extend) so the prefill projects only its last
  position onto the vocabulary, not all T (for PULSE-7B a [B, ~3000, 32064] float32 array otherwise).
  """
  embeds = model.embed(ids, pixel_values, layout=layout)
  hidden, cache = model.language_model.model(embeds, mask, cache=cache, prefill=prefill)
  return model.language_model.lm_head(hidden[:, -1]).astype(jnp.float32), cache


def _keys_per_row(rng: jax.Array) -> bool:
  """Whether `rng` holds a typed key per row ([B]) rather than one key (typed, or a legacy uint32[2] one)."""
  return jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1


def _choose(logits: jax.Array, rng: jax.Array, step: jax.Array, sampling: Sampling) -> jax.Array:
  """int32[B] next tokens from float32 logits [B, V]."""
  logits = logits.at[:, sampling.image_token_id].set(-jnp.inf)
  if sampling.temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_p < 1:
    ranked = jnp.sort(logits, -1)[:, ::-1]
    probs = jax.nn.softmax(ranked, -1)
    mass_before = jnp.cumsum(probs, -1) - probs  # exactly 0 for the most probable token: it is always kept
    cutoff = jnp.min(jnp.where(mass_before < sampling.top_p, ranked, jnp.inf), -1, keepdims=True)
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  if _keys_per_row(rng):
    keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(rng)
  else:
    keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(rng, step), row))(jnp.arange(len(logits)))
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _record(state: DecodeState, token: jax.Array, sampling: Sampling) -> DecodeState:
  """Writes the step's tokens: rows that were already done, or stop at eos now, get pad_id."""
  live = ~state.done
  ends = live & (token == sampling.eos_id)
  emitted = live & ~ends
  token = jnp.where(emitted, token, sampling.pad_id)
  step = state.step + 1
  return state.replace(
      step=step,
      tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], state.step, axis=1),
      last=token,
      lengths=state.lengths + emitted,
      done=state.done | ends | (step >= sampling.max_new_tokens))


def _constrain_cache(cache: KVCache, mesh: Mesh | None) -> KVCache:
  """Rows over the mesh's batch axes, as the inputs; the other axes follow the weights (XLA's choice)."""
  if mesh is None:
    return cache
  rows, free = parallel.batch_sharding(mesh, 1).spec[0], PartitionSpec.UNCONSTRAINED
  spec = lambda *axes: NamedSharding(mesh, PartitionSpec(*axes))
  kv = spec(None, rows, free, free, free)
  return jax.lax.with_sharding_constraint(
      cache, KVCache(k=kv, v=kv, valid=spec(rows, free), lengths=spec(rows), end=spec()))


def _start(graphdef, params, ids, mask, pixel_values, layout, active, rng, *, sampling: Sampling,
           mesh: Mesh | None) -> DecodeState:
  """Prefill: one pass over the left-padded prompts [B, T] (and images) into a fresh cache; chooses token 0.

  Under `mesh`'s abstract mesh, so that the prompt's attention takes the platform's kernel (models.kernels: splash
  on TPU, cuDNN on GPU at bf16 / fp16).
  """
  model = nnx.merge(graphdef, params)
  config = model.config
  batch, length = ids.shape
  cache = _constrain_cache(
      KVCache.empty(config.text, batch, length + sampling.max_new_tokens, config.jnp_dtype), mesh)
  with contextlib.nullcontext() if mesh is None else jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    logits, cache = _next_token_logits(model, ids, mask, cache, pixel_values, layout, prefill=True)
  state = DecodeState(
      step=jnp.zeros((), jnp.int32), tokens=jnp.full((batch, sampling.max_new_tokens), sampling.pad_id, jnp.int32),
      last=jnp.full((batch,), sampling.pad_id, jnp.int32), lengths=jnp.zeros((batch,), jnp.int32), done=~active,
      cache=_constrain_cache(cache, mesh), rng=rng)
  return _record(state, _choose(logits, rng, state.step, sampling), sampling)


def _advance(graphdef, params, state: DecodeState, *, sampling: Sampling) -> DecodeState:
  """One decode step: feed each row's last token (masked for finished rows), choose the next."""
  model = nnx.merge(graphdef, params)
  logits, cache = _next_token_logits(model, state.last[:, None], ~state.done[:, None], state.cache)
  state = state.replace(cache=cache)
  return _record(state, _choose(logits, state.rng, state.step, sampling), sampling)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "mesh"))
def _generate_batch(graphdef, params, ids, mask, pixel_values, layout, active, rng, *, sampling: Sampling,
                    mesh: Mesh | None) -> DecodeState:
  """Prefill, then the whole decode as one while_loop: ends when every row is done."""
  state = _start(graphdef, params, ids, mask, pixel_values, layout, active, rng, sampling=sampling, mesh=mesh)
  # The parameters ride in the carry (unchanged): NNX merges a model only from values of the current trace level.
  _, state = jax.lax.while_loop(lambda carry: ~jnp.all(carry[1].done),
                                lambda carry: (carry[0], _advance(graphdef, *carry, sampling=sampling)),
                                (params, state))
  return state


_start_jit = jax.jit(_start, static_argnames=("graphdef", "sampling", "mesh"))
_advance_jit = jax.jit(_advance, static_argnames=("graphdef", "sampling"), donate_argnames=("state",))


def _sampling(config: PulseConfig, max_new_tokens, eos_id, pad_id, temperature, top_p) -> Sampling:
  return Sampling(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                  image_token_id=config.image_token_id, temperature=float(temperature), top_p=float(top_p))


def _rng(rng) -> jax.Array:
  return jax.random.key(0) if rng is None else rng


def _gather(arrays):
  """The whole of each array on this host: a mesh spanning several processes holds only some rows here."""
  if all(array.is_fully_addressable for array in arrays):
    return jax.device_get(arrays)
  return multihost_utils.process_allgather(arrays, tiled=True)


def generate(model: PulseModel, config: PulseConfig, prompts: Sequence[Sequence[int]], pixel_values=None,
             layout=None, *, max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 0.0,
             top_p: float = 1.0, rng: jax.Array | None = None, buckets: Sequence[int] = DEFAULT_BUCKETS,
             pad_batch_to: int | None = None, mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Generates answers for a batch of prompts (greedy by default), in one compiled call.

  Args:
    model: the PulseModel (its parameters may be sharded over `mesh`).
    config: its PulseConfig.
    prompts: B unpadded token id sequences, each with one config.image_token_id per image feature token.
    pixel_values: float32[B, max_views, 3, S, S] (zero views for text-only rows), or None for text only.
    layout: int32[B, F] from pulse_jax.models.feature_layout(image_sizes, config), with pixel_values.
    max_new_tokens: tokens per row at most.
    eos_id: the end-of-answer token (LLaMA's "</s>" = 2); pad_id: filler after each row's end.
    temperature: 0 = greedy (the paper's setting); > 0 samples from softmax(logits / temperature).
    top_p: nucleus sampling mass (with temperature > 0).
    rng: PRNG key for sampling (default jax.random.key(0)), or keys [B], one per row, whose rows then sample
      the same tokens whatever batch they are in; the same key(s) give the same tokens.
    buckets: allowed padded prompt lengths (see the module docstring).
    pad_batch_to: fill the batch with inert rows up to this many, so that a last, smaller batch reuses the
      executable compiled for full ones.
    mesh: a (data, fsdp, tensor) mesh to shard the batch over (its leading axis over data x fsdp); the batch is
      filled with inert rows up to a multiple of that size. None: no sharding constraints. A mesh may span
      several processes (multi-host): each then passes the same prompts and images, and gets every row back.

  Returns:
    tokens int32[B, max_new_tokens], each row's generated tokens without the prompt, pad_id after its end; and
    lengths int32[B], tokens before eos (tokens[b, :lengths[b]] is row b's answer).
  """
  sampling = _sampling(config, max_new_tokens, eos_id, pad_id, temperature, top_p)
  batch = len(prompts)
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  rows = -(-max(batch, pad_batch_to or 0) // shards) * shards
  ids, mask = _left_pad(prompts, bucket_length(max(map(len, prompts)), buckets), rows, pad_id)
  inputs = (ids, mask, _pad_rows(pixel_values, rows), _pad_rows(layout, rows), np.arange(rows) < batch)
  rng = _rng(rng)
  if _keys_per_row(rng):
    if len(rng) != batch:
      raise ValueError(f"rng holds {len(rng)} keys for {batch} prompts; pass one key, or one per prompt")
    rng = jnp.concatenate([rng, jnp.repeat(rng[-1:], rows - batch, axis=0)])  # inert rows: the last row's key
  if mesh is not None:
    inputs = tuple(None if a is None else jax.device_put(a, parallel.batch_sharding(mesh, a.ndim)) for a in inputs)
  graphdef, params = nnx.split(model)
  state = _generate_batch(graphdef, params, *inputs, rng, sampling=sampling, mesh=mesh)
  tokens, lengths = _gather((state.tokens, state.lengths))
  return np.asarray(tokens[:batch]), np.asarray(lengths[:batch])


def stream(model: PulseModel, config: PulseConfig, prompt: Sequence[int], pixel_values=None, layout=None, *,
           max_new_tokens: int, eos_id: int, pad_id: int, temperature: float = 0.0, top_p: float = 1.0,
           rng: jax.Array | None = None, buckets: Sequence[int] = DEFAULT_BUCKETS) -> Iterator[int]:
  """Yields one prompt's answer token by token as it is produced (eos excluded), for interactive chat.

  The arguments are generate's for a single row, without the batch axis: prompt ids [T], pixel_values
  float32[max_views, 3, S, S] and layout int32[F] (or None for text only). The tokens equal those of generate
  with the same settings and rng for a batch holding this prompt as row 0. Prefill and the step are jit-compiled
  once per bucket; every yield is one step.
  """
  sampling = _sampling(config, max_new_tokens, eos_id, pad_id, temperature, top_p)
  ids, mask = _left_pad([prompt], bucket_length(len(prompt), buckets), 1, pad_id)
  graphdef, params = nnx.split(model)
  state = _start_jit(graphdef, params, ids, mask, None if pixel_values is None else np.asarray(pixel_values)[None],
                     None if layout is None else np.asarray(layout)[None], np.ones(1, bool), _rng(rng),
                     sampling=sampling, mesh=None)
  emitted = 0
  while True:
    token, length, done = jax.device_get((state.last[0], state.lengths[0], state.done[0]))
    if length > emitted:
      emitted = int(length)
      yield int(token)
    if done:
      return
    state = _advance_jit(graphdef, params, state, sampling=sampling)

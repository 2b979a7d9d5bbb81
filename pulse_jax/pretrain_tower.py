"""`pulse-jax pretrain-tower`: a vision tower trained from scratch to see ECGs, the tiny model's stand-in for CLIP.

PULSE starts from a pretrained CLIP ViT-L/14 and keeps it frozen; no pretrained tower exists at the demo's size,
and a tower trained from random weights through the language model learns to read rhythm far too slowly for the
demo's budget (README, The demo). This command pretrains one with supervision instead: it renders --pages
synthetic 12-lead sheets (pulse_jax.synthetic_pages), each showing a rhythm (sinus rhythm, sinus bradycardia,
sinus tachycardia, atrial fibrillation) and a conduction finding (none, 1st-degree AV block, RBBB, LBBB) drawn at
random, half of them augmented, and trains the tower of --config with two attention-pooled softmax heads, one
per question, on the sheets' global views (the tower is shared by every view; the global view shows the whole
sheet at a fifth of the cost). It prints the held-out accuracy of both heads and writes a whole model
(`convert.orbax_params` layout) whose tower is the trained one and whose projector and language model are freshly
initialised, for `checkpoint.init_from` with `train.frozen='^vision_tower/'`, as PULSE trains.

  pulse-jax pretrain-tower --out DIR [--config configs/tiny.py] [--demo-model] [--pages 2400] [--held-out 400]
      [--steps 1000] [--batch 32] [--learning-rate 3e-4] [--eval-every 250] [--seed 0] [--config.a.b=v ...]
"""

import argparse
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from pulse_jax import synthetic_pages
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.convert import orbax_params
from pulse_jax.ecg import synth
from pulse_jax.errors import ConfigError
from pulse_jax.models import PulseModel
from pulse_jax.models.clip import CLIPVisionTower
from pulse_jax.models.config import PulseConfig

RHYTHMS = ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "atrial_fibrillation")
CONDUCTION = ((), ("first_degree_av_block",), ("right_bundle_branch_block",), ("left_bundle_branch_block",))
# What synth cannot show together: AF has no PR interval, and at sinus-tachycardia rates a long PR hides in the T.
_EXCLUDED = {("atrial_fibrillation", 1), ("sinus_tachycardia", 1)}
HELD_OUT_SEED = 2_000_000  # held-out sheets come from seeds past every training sheet's
# Sheets of 7 s records instead of 10 s, as CODE-15% holds 30% of its exams (pulse_jax.ecg.corpus): such a sheet
# shows fewer beats than its width suggests, and a tower that never saw one reads sinus rhythm as bradycardia.
SHORT_RECORD_SHARE, SHORT_RECORD_SECONDS = 0.3, 7.0


def draw_pages(count: int, config: PulseConfig, *, first_seed: int, progress: bool = False
               ) -> synthetic_pages.Pages:
  """`count` sheets of random (rhythm, conduction) pairs, each augmented with probability 1/2 and a 7 s record with
  probability SHORT_RECORD_SHARE, deterministic in first_seed; labels int[count, 2] are the indices into RHYTHMS
  and CONDUCTION."""
  rng = np.random.default_rng(first_seed)
  pairs = [(r, c) for r in range(len(RHYTHMS)) for c in range(len(CONDUCTION))
           if (RHYTHMS[r], c) not in _EXCLUDED]
  labels = np.array([pairs[i] for i in rng.integers(0, len(pairs), count)]).reshape(count, 2)
  specs = [synth.EcgSpec(rhythm=RHYTHMS[r], findings=CONDUCTION[c]) for r, c in labels]
  augmented = rng.random(count) < 0.5
  seconds = np.where(rng.random(count) < SHORT_RECORD_SHARE, SHORT_RECORD_SECONDS, 10.0)
  return synthetic_pages.render_pages(specs, labels, augmented, config, first_seed=first_seed, seconds=seconds,
                                      progress=progress)


class TowerClassifier(nnx.Module):
  """The model's CLIP tower under one attention-pooling head per question: global views [B, 3, S, S] ->
  logits [questions, B, classes]. Features are taken where the LLaVA projector takes them (feature_layer)."""

  def __init__(self, config: PulseConfig, *, questions: int, classes: int, rngs: nnx.Rngs):
    width = config.vision.hidden_size
    self.tower = CLIPVisionTower(config, rngs=rngs)
    self.queries = nnx.Param(jax.random.normal(rngs.params(), (questions, width)) * width**-0.5)
    self.heads = nnx.Param(jax.random.normal(rngs.params(), (questions, width, classes)) * width**-0.5)
    self.biases = nnx.Param(jnp.zeros((questions, classes)))

  def __call__(self, views: jax.Array) -> jax.Array:
    features = self.tower(views)  # [B, P, E]
    weights = jax.nn.softmax(jnp.einsum("bpe,qe->qbp", features, self.queries[...]), axis=-1)
    pooled = jnp.einsum("qbp,bpe->qbe", weights, features)
    return jnp.einsum("qbe,qec->qbc", pooled, self.heads[...]) + self.biases[...][:, None]


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How much to pretrain: training and held-out sheets, steps of `batch` sheets, peak learning rate (5% warmup,
  cosine decay). The defaults are the command's and the demo's."""
  pages: int = 2400
  held_out: int = 400
  steps: int = 1000
  batch: int = 32
  learning_rate: float = 3e-4


def pretrain(config, recipe: Recipe, *, eval_every: int, seed: int = 0, progress: bool = False
             ) -> tuple[dict, list[dict[str, float]]]:
  """Trains the tower of `config` (an experiment config) on recipe.pages sheets; returns the whole model's
  parameters (pure dict, numpy; the tower trained, the rest initialised from `seed`) and one {"step", "loss",
  "rhythm_accuracy", "conduction_accuracy"} per evaluation on recipe.held_out other sheets."""
  pages, held_out, steps, batch = recipe.pages, recipe.held_out, recipe.steps, recipe.batch
  model_cfg = model_config(config.model)
  if pages < batch or held_out < 1 or steps < 1:
    raise ConfigError(f"pretrain-tower needs --pages >= --batch ({pages} < {batch}?), --held-out >= 1 and "
                      f"--steps >= 1")
  train_pages = draw_pages(pages, model_cfg, first_seed=seed, progress=progress)
  test_pages = draw_pages(held_out, model_cfg, first_seed=HELD_OUT_SEED + seed, progress=progress)
  classifier = TowerClassifier(model_cfg, questions=2, classes=len(RHYTHMS), rngs=nnx.Rngs(seed))
  warmup = steps // 20
  schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, warmup, max(steps, warmup + 1))
  optimizer = nnx.Optimizer(classifier, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)),
                            wrt=nnx.Param)

  @nnx.jit
  def train_step(classifier, optimizer, views, labels):
    def loss_fn(classifier):
      logits = classifier(views)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels.T).mean(axis=1).sum()
    loss, grads = nnx.value_and_grad(loss_fn)(classifier)
    optimizer.update(classifier, grads)
    return loss

  @nnx.jit
  def predict(classifier, views):
    return classifier(views).argmax(-1).T  # [B, questions]

  def accuracy() -> np.ndarray:
    picked = np.concatenate([np.asarray(predict(classifier, jnp.asarray(test_pages.pixel_values[i:i + batch, 0],
                                                                        model_cfg.jnp_dtype)))
                             for i in range(0, held_out, batch)])
    return (picked == test_pages.labels).mean(axis=0)

  rng = np.random.default_rng(seed)
  results, losses, started = [], [], time.perf_counter()
  for step in tqdm(range(1, steps + 1), desc="pretrain-tower", disable=not progress):
    rows = rng.integers(0, pages, batch)
    losses.append(train_step(classifier, optimizer, jnp.asarray(train_pages.pixel_values[rows, 0], model_cfg.jnp_dtype),
                             jnp.asarray(train_pages.labels[rows])))
    if step % eval_every == 0 or step == steps:
      rhythm, conduction = accuracy()
      results.append({"step": step, "loss": float(np.mean([float(x) for x in losses[-eval_every:]])),
                      "rhythm_accuracy": float(rhythm), "conduction_accuracy": float(conduction)})
      print(f"step {step}: train loss {results[-1]['loss']:.3f} (sum of both questions), held-out accuracy rhythm "
            f"{rhythm:.3f}, conduction {conduction:.3f} (chance about 0.25 each), "
            f"{time.perf_counter() - started:.0f} s", flush=True)
  model = PulseModel(model_cfg, rngs=nnx.Rngs(seed))
  nnx.update(model.vision_tower, nnx.state(classifier.tower))
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))), results


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", required=True, help="where the model checkpoint goes (for checkpoint.init_from)")
  parser.add_argument("--config", default="configs/tiny.py", metavar="FILE.py[:ARG]",
                      help="experiment config; `--config.a.b=value` arguments override its fields")
  parser.add_argument("--demo-model", action="store_true", help="apply the demo's overrides before --config.*")
  defaults = Recipe()
  parser.add_argument("--pages", type=int, default=defaults.pages, help="training sheets")
  parser.add_argument("--held-out", type=int, default=defaults.held_out, help="sheets never trained on, for the "
                      "accuracy")
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--batch", type=int, default=defaults.batch)
  parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                      help="peak of a 5%% warmup and cosine decay")
  parser.add_argument("--eval-every", type=int, default=250)
  parser.add_argument("--seed", type=int, default=0)
  accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
  from pulse_jax.demo import DEMO_OVERRIDES
  config = apply_overrides(load_config(args.config), [*(DEMO_OVERRIDES if args.demo_model else ()),
                                                      *args.overrides])
  recipe = Recipe(pages=args.pages, held_out=args.held_out, steps=args.steps, batch=args.batch,
                  learning_rate=args.learning_rate)
  params, _ = pretrain(config, recipe, eval_every=args.eval_every, seed=args.seed, progress=True)
  orbax_params.save(pathlib.Path(args.out), params, model_config(config.model))
  print(f"wrote {args.out}: a whole model with the pretrained tower, for checkpoint.init_from")
  return 0

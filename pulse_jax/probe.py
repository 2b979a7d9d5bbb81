"""`pulse-jax probe-image`: can a model config learn to answer from an ECG image, with no language to learn?

The demo's model must learn to read rhythm off rendered pages and learn ECGInstruct's language at once; this
probe takes the language away to measure the first alone. It renders --pages synthetic 12-lead pages of 4 classes
in turn (pulse_jax.synthetic_pages; alternate rounds of 4 augmented, see `augmented`), puts each behind the same
fixed prompt (<s>, the image placeholders, 12 fixed token ids) and trains the model of --config (the trainer's
make_train_step, its optimizer, schedule and frozen filter, on one device; initialised from
checkpoint.init_from when the config names one, e.g. a tower from `pulse-jax pretrain-tower`) to answer with one
of 4 token ids. --question picks the classes (QUESTIONS): 'rhythm' (sinus rhythm, sinus tachycardia, sinus
bradycardia, atrial fibrillation: the rate and regularity of the beats) or 'conduction' (sinus rhythm plain, with
1st-degree AV block, RBBB or LBBB: the PR interval and the QRS shape, tens of milliseconds on the page). Every
--eval-every steps it prints the training loss and the accuracy on --held-out pages it never trains on (rendered
from other seeds; chance 25%).

  pulse-jax probe-image [--config configs/tiny.py] [--demo-model] [--question rhythm|conduction]
      [--config.train.learning_rate=3e-4] [--config.train.frozen=''] [--config.checkpoint.init_from=DIR]
      [--pages 4000] [--held-out 400] [--steps 1500] [--eval-every 250]

--demo-model applies the demo's overrides first (pulse_jax.demo.DEMO_OVERRIDES: the tower 128 wide over 28 px
patches, spatial_unpad; its learning rate), so the probe measures the model `pulse-jax demo` trains, with its tower
trained from random weights (train.frozen=''; the demo freezes a pretrained one: pass
--config.checkpoint.init_from=DIR "--config.train.frozen='^vision_tower/'" to probe that).

The answer is the prompt's only variable token, so a model that does not use the image stays at chance: the
loss of the 2 target tokens (answer and </s>) is ln(4) / 2 = 0.69 until the image is read.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from pulse_jax import checkpoint, parallel, synthetic_pages, train
from pulse_jax.config import accept_config_overrides, apply_overrides, load_config, model_config
from pulse_jax.demo import DEMO_OVERRIDES
from pulse_jax.ecg import synth
from pulse_jax.errors import ConfigError
from pulse_jax.models import PulseModel, feature_layout, num_image_tokens
from pulse_jax.models.config import PulseConfig
from pulse_jax.synthetic_pages import Pages

# Each question's 4 classes, as the synthetic ECGs that show them.
QUESTIONS: dict[str, tuple[synth.EcgSpec, ...]] = {
    "rhythm": tuple(synth.EcgSpec(rhythm=rhythm) for rhythm in (
        "sinus_rhythm", "sinus_tachycardia", "sinus_bradycardia", "atrial_fibrillation")),
    "conduction": tuple(synth.EcgSpec(findings=findings) for findings in (
        (), ("first_degree_av_block",), ("right_bundle_branch_block",), ("left_bundle_branch_block",))),
}
CLASSES = 4
PROMPT_IDS = tuple(range(10, 22))  # the fixed question: 12 ids of any vocabulary of at least 40
ANSWER_IDS = tuple(range(30, 30 + CLASSES))
BOS, EOS = 1, 2
HELD_OUT_SEED = 1_000_000  # held-out pages are synthesised and rendered from seeds past every training page's


def augmented(page: int) -> bool:
  """Whether page `page` is rendered augmented: alternate rounds of CLASSES pages, so that each class has as many
  augmented pages as plain ones (augmenting every other page would augment exactly the odd classes, and the
  model would score 50% by telling augmented pages from plain ones)."""
  return bool(page // CLASSES % 2)


def render_pages(count: int, config: PulseConfig, *, first_seed: int, question: str = "rhythm",
                 progress: bool = False) -> Pages:
  """`count` pages cycling through QUESTIONS[question], page i synthesised and rendered from seed first_seed + i;
  labels int[count] are each page's class index in its question."""
  if question not in QUESTIONS:
    raise ConfigError(f"unknown question {question!r}; expected one of {', '.join(QUESTIONS)}")
  labels = np.arange(count) % CLASSES
  return synthetic_pages.render_pages([QUESTIONS[question][label] for label in labels], labels,
                                      [augmented(i) for i in range(count)], config, first_seed=first_seed,
                                      progress=progress)


def make_batch(pages: Pages, rows: np.ndarray, config: PulseConfig, seq_len: int) -> dict[str, np.ndarray]:
  """The trainer's batch fields for `rows` of `pages`: <s> image prompt answer </s>, loss on answer and </s>."""
  input_ids = np.zeros((len(rows), seq_len), np.int32)
  attention_mask = np.zeros((len(rows), seq_len), bool)
  loss_mask = np.zeros((len(rows), seq_len), bool)
  for row, page in enumerate(rows):
    image_tokens = num_image_tokens(tuple(pages.image_sizes[page]), config)
    tokens = [BOS, *[config.image_token_id] * image_tokens, *PROMPT_IDS, ANSWER_IDS[pages.labels[page]], EOS]
    input_ids[row, :len(tokens)] = tokens
    attention_mask[row, :len(tokens)] = True
    loss_mask[row, len(tokens) - 2:len(tokens)] = True
  return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
          "pixel_values": pages.pixel_values[rows].astype(np.float32),
          "layout": feature_layout(pages.image_sizes[rows], config)}


def probe(config, *, pages: int, held_out: int, steps: int, eval_every: int, question: str = "rhythm",
          progress: bool = False) -> list[dict[str, float]]:
  """Trains on pages - held_out rendered pages; returns one {"step", "loss", "accuracy"} per evaluation.

  `config` is an experiment config (configs/tiny.py); its model, train.global_batch, optimizer settings and
  train.frozen are used, train.steps is replaced by `steps`.
  """
  model_cfg = model_config(config.model)
  if model_cfg.text.vocab_size <= max(ANSWER_IDS) or model_cfg.image_token_id <= max(ANSWER_IDS):
    raise ConfigError(f"probe-image needs token ids up to {max(ANSWER_IDS)} below the image token and the vocab")
  batch_size = int(config.train.global_batch)
  if not batch_size <= pages - held_out or held_out < 1:
    raise ConfigError(f"--pages {pages} must exceed --held-out {held_out} (>= 1) by at least one batch of "
                      f"{batch_size}")
  train_pages = render_pages(pages - held_out, model_cfg, first_seed=0, question=question, progress=progress)
  test_pages = render_pages(held_out, model_cfg, first_seed=HELD_OUT_SEED, question=question, progress=progress)
  longest = max(num_image_tokens(tuple(s), model_cfg) for s in np.concatenate(
      [train_pages.image_sizes, test_pages.image_sizes]))
  seq_len = -(-(longest + len(PROMPT_IDS) + 3) // 16) * 16

  mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
  fns = train.make_train_step(
      model_cfg, mesh, rules=parallel.logical_rules(config.mesh.rules),
      tx=train.make_optimizer(config.train, steps), schedule=train.learning_rate_schedule(config.train, steps),
      frozen=config.train.frozen, global_batch=batch_size, seq_len=seq_len)
  if config.checkpoint.init_from:  # e.g. a tower from `pulse-jax pretrain-tower`
    params, source = checkpoint.load_params(config.checkpoint.init_from, model_cfg, fns.state_shardings["params"])
    state = fns.init_from_params(params)
    print(f"initialised from {source}", flush=True)
  else:
    state = fns.init(jnp.int32(config.train.seed))
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: PulseModel(model_cfg, rngs=nnx.Rngs(0))))

  @jax.jit
  def answers(params, batch):
    """The answer id each row's model picks among ANSWER_IDS, at the position before the answer."""
    model = nnx.merge(graphdef, params)
    logits = model(batch["input_ids"], batch["pixel_values"], attention_mask=batch["attention_mask"],
                   layout=batch["layout"])
    before_answer = batch["attention_mask"].sum(1) - 3
    logits = jnp.take_along_axis(logits, before_answer[:, None, None], axis=1)[:, 0]
    return jnp.argmax(logits[:, ANSWER_IDS[0]:ANSWER_IDS[-1] + 1], axis=-1)

  def accuracy(params) -> float:
    correct = 0
    for start in range(0, held_out, batch_size):
      rows = np.arange(start, start + batch_size) % held_out  # the last batch wraps; only its new rows count
      picked = np.asarray(answers(params, parallel.global_batch(make_batch(test_pages, rows, model_cfg, seq_len),
                                                                 mesh)))
      fresh = rows >= start
      correct += int((picked[fresh] == test_pages.labels[rows[fresh]]).sum())
    return correct / held_out

  rng = np.random.default_rng(config.train.seed)
  results, losses, started = [], [], time.perf_counter()
  for step in tqdm(range(1, steps + 1), desc="probe", disable=not progress):
    rows = rng.integers(0, len(train_pages.labels), batch_size)
    state, metrics = fns.step(state, parallel.global_batch(make_batch(train_pages, rows, model_cfg, seq_len), mesh))
    losses.append(metrics["loss"])
    if step % eval_every == 0 or step == steps:
      result = {"step": step, "loss": float(np.mean([float(x) for x in losses[-eval_every:]])),
                "accuracy": accuracy(state["params"])}
      results.append(result)
      print(f"step {step}: train loss {result['loss']:.3f}, held-out accuracy {result['accuracy']:.3f} "
            f"(chance {1 / CLASSES:.2f}), {time.perf_counter() - started:.0f} s", flush=True)
  return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="configs/tiny.py", metavar="FILE.py[:ARG]",
                      help="experiment config; `--config.a.b=value` arguments override its fields")
  parser.add_argument("--pages", type=int, default=4000, help="rendered pages in all, held-out ones included")
  parser.add_argument("--held-out", type=int, default=400, help="pages never trained on, for the accuracy")
  parser.add_argument("--steps", type=int, default=1500, help="training steps of train.global_batch pages")
  parser.add_argument("--eval-every", type=int, default=250)
  parser.add_argument("--demo-model", action="store_true", help="apply the demo's overrides before --config.*")
  parser.add_argument("--question", choices=tuple(QUESTIONS), default="rhythm", help="which 4 classes to tell apart")
  accept_config_overrides(parser)


def run(args: argparse.Namespace) -> int:
  config = load_config(args.config)
  demo_model = (*DEMO_OVERRIDES, "train.frozen=''") if args.demo_model else ()
  config = apply_overrides(config, [*demo_model, *args.overrides])
  probe(config, pages=args.pages, held_out=args.held_out, steps=args.steps, eval_every=args.eval_every,
        question=args.question, progress=True)
  return 0

"""`pulse-jax convert` on random tiny models: HF -> ours -> HF and LLaVA -> ours -> LLaVA bit-identical, logits
parity both ways, transformers' AutoProcessor + greedy generate equal to ours, errors naming the tensor."""

import copy
import json
import pathlib
import shutil

import grain
import jax
import ml_dtypes
import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pulse_jax import checkpoint, cli, decode  # noqa: E402
from pulse_jax.config import model_config  # noqa: E402
from pulse_jax.convert import hf, llava_original, orbax_params  # noqa: E402
from pulse_jax.convert.cli import export_hf, import_hf, parse_size  # noqa: E402
from pulse_jax.data.conversation import encode_prompt, render_prompt  # noqa: E402
from pulse_jax.data.image_processor import for_model, preprocess  # noqa: E402
from pulse_jax.errors import ConversionError  # noqa: E402
from pulse_jax.models import VisionConfig, feature_layout, num_image_tokens  # noqa: E402
from tests.hf_oracle import SPECS, tiny_llava_next, to_numpy  # noqa: E402
from tests.train_helpers import SMALL_OVERRIDES, TINY_CONFIG, small_config, small_train_step  # noqa: E402

pytest_plugins = ["tests.text_fixtures"]

ATOL = 1e-4
SHARD_LIMIT = "40KB"  # the tiny model is ~0.7 MB: many shards
IMAGE_SIZE = (30, 70)  # (height, width): a 1 x 2 anyres grid of 32 px tiles
QUESTION = "What is the rhythm in this ECG?"


def _convert(*args) -> int:
  return cli.main(["convert", *map(str, args)])


def _tensors(folder: pathlib.Path, rename=hf.canonical_name) -> dict[str, np.ndarray]:
  """Every tensor of a folder's *.safetensors, by renamed key."""
  tensors = {}
  for file in sorted(folder.glob("*.safetensors")):
    tensors.update((rename(key), value) for key, value in load_file(str(file)).items())
  return tensors


def _assert_same_tensors(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
    assert got[name].tobytes() == value.tobytes(), name


@pytest.fixture(scope="module")
def source(tokenizer, tmp_path_factory):
  """A random transformers LLaVA-NeXT (tests.hf_oracle, GQA) with the session tokenizer's vocabulary and <image>
  id, saved with save_pretrained (legacy key layout) beside that tokenizer.model; and the model itself."""
  theirs = tiny_llava_next(SPECS[1], seed=11)
  theirs.resize_token_embeddings(tokenizer.vocab_size, mean_resizing=False)
  with torch.no_grad():  # rows of the same scale as the others (the oracle's std), so every token matters
    theirs.get_input_embeddings().weight.normal_(0, 0.15)
    theirs.lm_head.weight.normal_(0, 0.15)
  theirs.config.image_token_index = tokenizer.image_token_id
  folder = tmp_path_factory.mktemp("hf_source")
  theirs.save_pretrained(folder)
  shutil.copyfile(tokenizer.path, folder / "tokenizer.model")
  return folder, theirs


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
  """from-hf then to-hf through the command line: (the Orbax checkpoint, the exported folder)."""
  root = tmp_path_factory.mktemp("converted")
  assert _convert("from-hf", source[0], "--out", root / "ckpt") == 0
  assert _convert("to-hf", root / "ckpt", "--out", root / "hf", "--max-shard-size", SHARD_LIMIT) == 0
  return root / "ckpt", root / "hf"


@pytest.fixture(scope="module")
def ours(converted):
  """Our model restored from the converted checkpoint (configuration from the checkpoint)."""
  params, config, _ = orbax_params.restore(converted[0])
  return hf.build_model(config, params), config


def _image() -> Image.Image:
  pixels = np.random.default_rng(0).integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
  return Image.fromarray(pixels)


def _our_inputs(config, tokenizer):
  """(prompt ids, pixel values [1, V, 3, S, S], layout [1, F]) of QUESTION about _image(), as pulse-jax makes them."""
  image = _image()
  views = preprocess(image, for_model(config)).pixel_values
  pixels = np.zeros((1, config.max_views, *views.shape[1:]), np.float32)
  pixels[0, :len(views)] = views
  prompt = encode_prompt([{"from": "human", "value": f"<image>\n{QUESTION}"}], tokenizer,
                         num_image_tokens=num_image_tokens(IMAGE_SIZE, config), record_id="test")
  return prompt, pixels, feature_layout(np.array([IMAGE_SIZE]), config)


# ------------------------------------------------------------------------------------------- Hugging Face


def test_hf_to_ours_to_hf_is_bit_identical_and_sharded(source, converted):
  folder, ckpt = source[0], converted[1]
  _assert_same_tensors(_tensors(ckpt), _tensors(folder))
  index = json.loads((ckpt / hf.SAFETENSORS_INDEX).read_text())
  shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
  assert len(shards) > 3 and sorted(set(index["weight_map"].values())) == shards
  for shard in shards:
    with safe_open(str(ckpt / shard), framework="np") as handle:
      names = set(handle.keys())
    assert names == {name for name, file in index["weight_map"].items() if file == shard}
    header = 4096  # a generous bound on the JSON header of a shard
    assert len(names) == 1 or (ckpt / shard).stat().st_size <= parse_size(SHARD_LIMIT) + header, shard
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in _tensors(folder).values())
  assert json.loads((ckpt / "config.json").read_text())["image_token_index"] == \
      json.loads((folder / "config.json").read_text())["image_token_index"]


def test_bfloat16_stays_bfloat16(source, tmp_path):
  copy.deepcopy(source[1]).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  config = import_hf(tmp_path / "bf16", tmp_path / "ckpt")
  assert config.param_dtype == "bfloat16"
  export_hf(tmp_path / "ckpt", tmp_path / "out", tokenizer=str(source[0]))
  tensors = _tensors(tmp_path / "out")
  assert {v.dtype for v in tensors.values()} == {np.dtype(ml_dtypes.bfloat16)}
  _assert_same_tensors(tensors, _tensors(tmp_path / "bf16"))


def test_logits_hf_to_ours(source, ours):
  _, theirs = source
  model, config = ours
  rng = np.random.default_rng(1)
  ids = np.concatenate([rng.integers(3, config.image_token_id, 5),
                        np.full(num_image_tokens(IMAGE_SIZE, config), config.image_token_id),
                        rng.integers(3, config.image_token_id, 6)])[None].astype(np.int32)
  pixels = rng.normal(size=(1, config.max_views, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = to_numpy(theirs(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=torch.tensor(pixels),
                           image_sizes=torch.tensor([IMAGE_SIZE])).logits)
  np.testing.assert_allclose(np.asarray(model(ids, pixels, np.array([IMAGE_SIZE]))), want, atol=ATOL, rtol=0)


def _random_params(config, seed):
  """Random parameters of our model at the oracle's scales: norms near 1, biases and weights of std 0.1 / 0.15."""
  rng = np.random.default_rng(seed)

  def draw(path, spec):
    noise = rng.standard_normal(spec.shape).astype(np.float32)
    leaf = str(path[-1].key)
    return (1 + 0.1 * noise) if leaf == "scale" else (0.1 if leaf == "bias" else 0.15) * noise
  return jax.tree_util.tree_map_with_path(draw, hf.abstract_params(config))


def test_logits_ours_to_hf(ours, tokenizer, tmp_path):
  _, config = ours
  params = _random_params(config, seed=3)
  orbax_params.save(tmp_path / "ckpt", params, config)
  assert _convert("to-hf", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer", tokenizer.path) == 0
  theirs = transformers.LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf")
  prompt, pixels, _ = _our_inputs(config, tokenizer)
  with torch.no_grad():
    want = to_numpy(theirs(input_ids=torch.tensor(prompt[None], dtype=torch.long),
                           pixel_values=torch.tensor(pixels[:, :3]), image_sizes=torch.tensor([IMAGE_SIZE])).logits)
  got = hf.build_model(config, params)(prompt[None], pixels, np.array([IMAGE_SIZE]))
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


def test_auto_processor_and_generate_equal_ours(converted, ours, tokenizer):
  """transformers' AutoProcessor renders our llava_v1 prompt, tokenizes it to our ids and preprocesses the image to
  our views; LlavaNextForConditionalGeneration.generate (greedy) gives our decode.generate's tokens."""
  model, config = ours
  processor = transformers.AutoProcessor.from_pretrained(converted[1])
  theirs = transformers.LlavaNextForConditionalGeneration.from_pretrained(converted[1])
  turns = [{"from": "human", "value": "<image>\nWhat is the rhythm?"}, {"from": "gpt", "value": "Sinus rhythm."},
           {"from": "human", "value": "Any ST elevation?"}, {"from": "gpt", "value": "No."}]
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the rhythm?"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "Sinus rhythm."}]},
              {"role": "user", "content": "Any ST elevation?"}, {"role": "assistant", "content": "No."}]
  assert processor.apply_chat_template(messages) == render_prompt(turns, record_id="t")
  assert processor.apply_chat_template(messages[:3], add_generation_prompt=True) == \
      render_prompt(turns[:3], record_id="t")

  prompt, pixels, layout = _our_inputs(config, tokenizer)
  text = processor.apply_chat_template(
      [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
      add_generation_prompt=True)
  inputs = processor(images=_image(), text=text, return_tensors="pt")
  np.testing.assert_array_equal(inputs["input_ids"][0].numpy(), prompt)
  np.testing.assert_allclose(inputs["pixel_values"][0].numpy(), pixels[0, :3], atol=1e-5)

  steps = 12
  with torch.no_grad():
    generated = theirs.generate(**inputs, max_new_tokens=steps, do_sample=False,
                                suppress_tokens=[config.image_token_id])[0, len(prompt):].tolist()
  if generated[-1] == tokenizer.eos_id:
    generated = generated[:-1]
  tokens, lengths = decode.generate(model, config, [prompt], pixels, layout, max_new_tokens=steps,
                                    eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  assert len(generated) > steps // 2  # a real answer, not an immediate eos
  assert tokens[0, :lengths[0]].tolist() == generated


def test_pixel_statistics_travel_with_the_export(ours, tokenizer, tmp_path):
  """A model normalising with its own statistics (configs/tiny.py's ECG-page ones) exports them in
  preprocessor_config.json, where AutoProcessor and `convert from-hf` find them; LLaVA, which normalises with its
  CLIP tower's, is refused."""
  _, config = ours
  config = config.replace(image_mean=(0.94, 0.87, 0.85), image_std=(0.08, 0.09, 0.10))
  orbax_params.save(tmp_path / "ckpt", _random_params(config, seed=5), config)
  assert _convert("to-hf", tmp_path / "ckpt", "--out", tmp_path / "hf", "--tokenizer", tokenizer.path) == 0
  processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
  _, pixels, _ = _our_inputs(config, tokenizer)
  np.testing.assert_allclose(processor.image_processor(_image(), return_tensors="np")["pixel_values"][0],
                             pixels[0, :3], atol=1e-4)
  assert hf.read_config(tmp_path / "hf").image_mean == config.image_mean
  assert _convert("from-hf", tmp_path / "hf", "--out", tmp_path / "back") == 0
  assert orbax_params.restore(tmp_path / "back")[1].image_std == config.image_std
  with pytest.raises(ConversionError, match="LLaVA normalises images with its CLIP tower's statistics"):
    llava_original.config_to_llava(config, "openai/clip-vit-large-patch14-336")


def test_flat_models_are_refused_by_to_hf(source, tmp_path, capsys):
  assert _convert("from-hf", source[0], "--out", tmp_path / "flat", "--merge-mode", "flat") == 0
  assert orbax_params.restore(tmp_path / "flat")[1].merge_mode == "flat"
  assert _convert("to-hf", tmp_path / "flat", "--out", tmp_path / "hf") == 1
  assert "flat-mode model cannot be expressed" in capsys.readouterr().err
  assert not (tmp_path / "hf").exists()


def test_errors_name_the_tensor(converted, tmp_path):
  exported = converted[1]
  truncated = tmp_path / "truncated"
  shutil.copytree(exported, truncated)
  shard = sorted(truncated.glob("model-*.safetensors"))[2]
  with safe_open(str(shard), framework="np") as handle:
    keys = list(handle.keys())
  shard.write_bytes(shard.read_bytes()[:-100])
  with pytest.raises(ConversionError, match=rf"{shard.name}.*truncated: tensor") as error:
    import_hf(truncated, tmp_path / "ckpt1")
  assert any(key in str(error.value) for key in keys)

  reshaped = tmp_path / "reshaped"
  shutil.copytree(exported, reshaped, ignore=shutil.ignore_patterns("*.safetensors", hf.SAFETENSORS_INDEX))
  tensors = _tensors(exported)
  name = "model.language_model.layers.1.mlp.up_proj.weight"
  tensors[name] = tensors[name][:-1]
  save_file(tensors, str(reshaped / "model.safetensors"))
  with pytest.raises(ConversionError, match=rf"model.safetensors: tensor {name}: shape \(127, 64\), but this model "
                     r"needs \(128, 64\)"):
    import_hf(reshaped, tmp_path / "ckpt2")

  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copyfile(exported / "config.json", pickled / "config.json")
  (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
  with pytest.raises(ConversionError, match="pytorch_model.bin: pickle files are never loaded"):
    import_hf(pickled, tmp_path / "ckpt3")
  with pytest.raises(ConversionError, match="already exists"):
    import_hf(exported, converted[0])


def test_converted_checkpoint_initialises_training_on_a_mesh(tmp_path):
  """What `checkpoint.init_from` and evaluation do with a converted checkpoint: restore the parameters onto the
  train step's shardings (each device its shard), then build the train state around them."""
  config = small_config("model.merge_mode=spatial_unpad")
  step_fns = small_train_step(config, (2, 2, 2))
  pulse_config = model_config(config.model)
  params = _random_params(pulse_config, seed=5)
  orbax_params.save(tmp_path / "ckpt", params, pulse_config)
  shardings = step_fns.state_shardings["params"]
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        hf.abstract_params(pulse_config), shardings)
  restored = checkpoint.restore_params(checkpoint.orbax_step_dir(tmp_path / "ckpt"), target)
  for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), want)
  state = step_fns.init_from_params(restored)
  assert int(state["step"]) == 0
  np.testing.assert_array_equal(np.asarray(state["params"]["language_model"]["lm_head"]["kernel"]),
                                params["language_model"]["lm_head"]["kernel"])


def test_training_checkpoints_export_with_the_runs_config(tokenizer, tmp_path, capsys):
  """A training run's checkpoint (pulse_jax.checkpoint layout, in its workdir) stores no model configuration: to-hf
  needs the run's --config, whose --config.a.b=v overrides reach the model."""
  overrides = ("model.merge_mode=spatial_unpad", f"model.text.vocab_size={tokenizer.vocab_size}",
               f"model.image_token_id={tokenizer.image_token_id}")
  config = small_config(*overrides)
  pulse_config = model_config(config.model)
  params = _random_params(pulse_config, seed=7)
  saver = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), keep=1)
  saver.save(3, {"params": params, "step": np.int32(3)}, iter(grain.MapDataset.range(4).to_iter_dataset()))
  saver.wait()
  saver.close()
  assert _convert("to-hf", tmp_path / "run", "--out", tmp_path / "hf", "--tokenizer", tokenizer.path) == 1
  assert "stores no model configuration: pass the run's --config" in capsys.readouterr().err
  flags = [f"--config.{override}" for override in (*SMALL_OVERRIDES, *overrides)]
  assert _convert("to-hf", tmp_path / "run", "--out", tmp_path / "hf", "--tokenizer", tokenizer.path,
                  "--config", TINY_CONFIG, *flags) == 0
  _assert_same_tensors(_tensors(tmp_path / "hf"), {name: np.ascontiguousarray(value)
                                                   for name, value in hf.hf_tensors(params)})


def test_parse_size():
  assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("40kb") == 40_000
  assert parse_size("1000") == 1000


# ------------------------------------------------------------------------------------------- original LLaVA

# Key prefixes of LLaVA's LlavaLlamaForCausalLM, written out for the test from transformers' names.
_LLAVA_KEYS = (
    ("model.language_model.", "model."),
    ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("lm_head.", "lm_head."),
)


def _pulse_style_config(theirs, vision_tower: str) -> dict:
  """config.json as PULSE-7B's (LLaVA 1.6 fields, flat merge left at LLaVA's default), at the tiny model's sizes."""
  text = theirs.config.text_config
  return {
      "_name_or_path": "liuhaotian/llava-v1.6-vicuna-7b", "architectures": ["LlavaLlamaForCausalLM"],
      "model_type": "llava_llama", "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
      "hidden_act": "silu", "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
      "num_attention_heads": text.num_attention_heads, "num_hidden_layers": text.num_hidden_layers,
      "num_key_value_heads": text.num_key_value_heads, "max_position_embeddings": text.max_position_embeddings,
      "rms_norm_eps": text.rms_norm_eps, "rope_scaling": None, "rope_theta": 500.0, "tie_word_embeddings": False,
      "vocab_size": text.vocab_size, "torch_dtype": "bfloat16", "use_cache": True,
      "image_aspect_ratio": "anyres", "image_grid_pinpoints": [[64, 32], [32, 64], [64, 64]],
      "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
      "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
      "mm_vision_tower": vision_tower, "tokenizer_model_max_length": 256, "unfreeze_mm_vision_tower": False,
  }


@pytest.fixture(scope="module")
def llava(source, tmp_path_factory):
  """A PULSE-style original-LLaVA checkpoint of the source model in bfloat16 (two shards and an index, no
  image_newline as in flat mode, tokenizer.model) and a CLIPVisionModel folder of its vision tower."""
  folder, theirs = source
  root = tmp_path_factory.mktemp("llava")
  theirs.model.vision_tower.save_pretrained(root / "clip")
  tensors = {}
  for name, value in theirs.state_dict().items():
    for prefix, llava_prefix in _LLAVA_KEYS:
      if name.startswith(prefix):
        tensors[llava_prefix + name[len(prefix):]] = value.float().numpy().astype(ml_dtypes.bfloat16)
  (root / "pulse").mkdir()
  names = sorted(tensors)
  for number, part in enumerate((names[::2], names[1::2]), 1):
    save_file({k: tensors[k] for k in part}, str(root / "pulse" / f"model-0000{number}-of-00002.safetensors"),
              metadata={"format": "pt"})
  (root / "pulse" / "config.json").write_text(json.dumps(_pulse_style_config(theirs, str(root / "clip"))))
  shutil.copyfile(folder / "tokenizer.model", root / "pulse" / "tokenizer.model")
  return root / "pulse", root / "clip", tensors


def test_llava_to_ours_to_llava_is_bit_identical(llava, source, tmp_path):
  folder, clip, tensors = llava
  assert "model.mm_projector.0.weight" in tensors and "model.embed_tokens.weight" in tensors
  assert _convert("from-llava", folder, "--out", tmp_path / "ckpt") == 0
  params, config, _ = orbax_params.restore(tmp_path / "ckpt")
  assert (config.merge_mode, config.param_dtype) == ("flat", "bfloat16")
  assert config.grid_pinpoints == ((32, 64), (64, 32), (64, 64))  # LLaVA's (width, height), transposed
  # The same weights as importing the transformers checkpoint in flat mode, cast to bfloat16.
  from_hf = import_hf(source[0], tmp_path / "hf_ckpt", merge_mode="flat")
  reference, _, _ = orbax_params.restore(tmp_path / "hf_ckpt", from_hf.replace(param_dtype="bfloat16"))
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
    assert got.tobytes() == want.tobytes()

  assert _convert("to-llava", tmp_path / "ckpt", "--out", tmp_path / "out", "--vision-tower", clip) == 0
  _assert_same_tensors(_tensors(tmp_path / "out", rename=str), tensors)
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  original = json.loads((folder / "config.json").read_text())
  for field in ("mm_vision_tower", "image_grid_pinpoints", "mm_vision_select_layer", "mm_projector_type",
                "vocab_size", "hidden_size", "num_key_value_heads", "rope_theta", "torch_dtype"):
    assert written[field] == original[field], field
  assert written["mm_patch_merge_type"] == "flat"
  assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
  assert "<image>" not in (tmp_path / "out" / "tokenizer_config.json").read_text()


def test_llava_without_tower_weights_needs_the_tower(llava, tmp_path, capsys):
  folder, clip, tensors = llava
  bare = tmp_path / "bare"
  bare.mkdir()
  save_file({k: v for k, v in tensors.items() if "vision_tower" not in k}, str(bare / "model.safetensors"))
  config = json.loads((folder / "config.json").read_text())
  (bare / "config.json").write_text(json.dumps({**config, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
                                                "mm_hidden_size": 1024, "image_grid_pinpoints": [[336, 672]]}))
  with pytest.raises(ConversionError, match="holds no vision tower weights .* pass --vision-tower DIR"):
    llava_original.open_checkpoint(bare)
  (bare / "config.json").write_text(json.dumps({**config, "mm_vision_tower": "someone/clip-tiny"}))
  assert _convert("from-llava", bare, "--out", tmp_path / "none") == 1
  assert "is neither a local folder nor a known CLIP tower" in capsys.readouterr().err
  # A full CLIPModel folder as on the hub: the tower under vision_model.*, a text tower beside it.
  hub_clip = tmp_path / "hub_clip"
  hub_clip.mkdir()
  save_file({**{f"vision_model.{k}": v for k, v in load_file(str(clip / "model.safetensors")).items()},
             "text_model.embeddings.token_embedding.weight": np.zeros((8, 4), np.float32)},
            str(hub_clip / "model.safetensors"))
  (hub_clip / "config.json").write_text(json.dumps(
      {"model_type": "clip", "vision_config": json.loads((clip / "config.json").read_text())}))
  assert _convert("from-llava", folder, "--out", tmp_path / "full") == 0
  want = jax.tree.leaves(orbax_params.restore(tmp_path / "full")[0])
  for tower in (clip, hub_clip):
    out = tmp_path / f"with_{tower.name}"
    assert _convert("from-llava", bare, "--out", out, "--vision-tower", tower) == 0
    for got, expected in zip(jax.tree.leaves(orbax_params.restore(out)[0]), want):
      assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("field, value, message", [
    ("mm_projector_type", None, "mm_projector_type 'linear'"),
    ("image_aspect_ratio", "pad", "image_aspect_ratio 'pad'"),
    ("mm_patch_merge_type", "spatial", "mm_patch_merge_type 'spatial'"),
    ("model_type", "llava_mistral", "model_type 'llava_mistral'"),
    ("mm_vision_select_layer", None, "no mm_vision_select_layer"),
])
def test_unsupported_llava_variants_are_named(source, field, value, message):
  config = {k: v for k, v in _pulse_style_config(source[1], "x").items() if k != field}
  if value is not None:
    config[field] = value
  vision = source[1].config.vision_config.to_dict()
  with pytest.raises(ConversionError, match=message):
    llava_original.config_from_llava(config, vision, image_token_id=400)


def test_llava_v16_spatial_unpad_config_round_trips(source):
  vision = source[1].config.vision_config.to_dict()
  llava_config = {**_pulse_style_config(source[1], "x"), "mm_patch_merge_type": "spatial_unpad"}
  config = llava_original.config_from_llava(llava_config, vision, image_token_id=400)
  assert config.merge_mode == "spatial_unpad" and config.vision.feature_select == "default"
  back = llava_original.config_to_llava(config, "x")
  for field in ("mm_patch_merge_type", "image_grid_pinpoints", "mm_vision_select_feature", "rms_norm_eps"):
    assert back[field] == llava_config[field], field
  assert llava_original.default_vision_tower(config.vision) is None  # the tiny tower is no known CLIP
  assert llava_original.default_vision_tower(VisionConfig()) == "openai/clip-vit-large-patch14-336"

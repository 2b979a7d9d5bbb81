"""Anyres preprocessing: real ECG images, parity with transformers' LLaVA-NeXT, odd modes and sizes, bad files."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pulse_jax.data import image_processor as ip
from pulse_jax.errors import ConfigError, ImageError

PULSE = ip.ImageProcessorConfig()
TINY_PINPOINTS = ((32, 64), (64, 32), (64, 64))
MEAN = np.asarray(ip.CLIP_MEAN, np.float32)[:, None, None]
STD = np.asarray(ip.CLIP_STD, np.float32)[:, None, None]


def real_images(real_ecg_dir):
  paths = sorted(p for p in (real_ecg_dir / "images").iterdir() if p.suffix in (".png", ".jpg", ".bmp"))
  assert len(paths) >= 10
  return paths


def unnormalise(pixel_values: np.ndarray) -> np.ndarray:
  """CLIP-normalised float32[V, 3, t, t] back to [0, 1] RGB."""
  return pixel_values * STD + MEAN


def assert_uniform(pixels: np.ndarray, rgb01) -> None:
  """All pixels of a [3, ...] block equal the given [0, 1] RGB colour."""
  np.testing.assert_allclose(np.moveaxis(pixels, 0, -1), np.broadcast_to(rgb01, pixels.shape[1:] + (3,)),
                             atol=1e-5)


def hf_pinpoints():
  hf = pytest.importorskip("transformers.models.llava_next.image_processing_pil_llava_next")
  return tuple(tuple(p) for p in hf.LlavaNextImageProcessorPil.image_grid_pinpoints)


# ------------------------------------------------------------------------------------------------- real images


def test_every_real_image_gives_plausible_views(real_ecg_dir):
  lowest, highest = (0 - MEAN) / STD, (1 - MEAN) / STD
  for path in real_images(real_ecg_dir):
    image = ip.load_image(path)
    out = ip.preprocess(image)
    rows, cols = out.grid_shape
    assert out.image_size == (image.height, image.width)
    assert (rows, cols) == ip.anyres_grid_shape(out.image_size, PULSE.grid_pinpoints, 336)
    assert ip.num_views(out.image_size, PULSE) == 1 + rows * cols
    assert out.pixel_values.shape == (1 + rows * cols, 3, 336, 336)
    assert out.pixel_values.dtype == np.float32
    assert np.isfinite(out.pixel_values).all()
    assert (out.pixel_values >= lowest - 1e-5).all() and (out.pixel_values <= highest + 1e-5).all(), path.name
    global_view = unnormalise(out.pixel_values[0])
    # Paper ECGs: a light background with dark traces, never blank.
    assert 0.3 < global_view.mean() < 1.0 and global_view.std() > 0.03, path.name


def test_landscape_ecgs_get_the_papers_token_counts():
  # pulse_paper.md §5.1: 1241x704 and 2200x1700 -> 672x672 -> 4 tiles -> 2,880 tokens; very wide -> 1008x336.
  for (height, width), tokens in [((704, 1241), 2880), ((1700, 2200), 2880), ((500, 3000), 2304)]:
    assert ip.num_image_features((height, width), PULSE, patch_size=14, merge_type="flat") == tokens


# ------------------------------------------------------------------------------------------- transformers parity


def hf_processor(tile: int, pinpoints):
  hf = pytest.importorskip("transformers.models.llava_next.image_processing_pil_llava_next")
  # llava-hf/llava-v1.6-*-hf preprocessor_config.json, scaled to `tile` px.
  return hf.LlavaNextImageProcessorPil(
      size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, do_center_crop=True,
      resample=Image.Resampling.BICUBIC, image_grid_pinpoints=[list(p) for p in pinpoints])


@pytest.mark.parametrize("tile, pinpoints", [(336, None), (32, TINY_PINPOINTS)])
def test_real_images_match_transformers_pil_processor(real_ecg_dir, tile, pinpoints):
  pinpoints = pinpoints or hf_pinpoints()
  reference = hf_processor(tile, pinpoints)
  config = ip.ImageProcessorConfig(tile_size=tile, grid_pinpoints=pinpoints, transparency="white")
  for path in real_images(real_ecg_dir):
    image = ip.load_image(path)
    expected = reference(image, return_tensors="np")
    out = ip.preprocess(image, config)
    assert tuple(expected["image_sizes"][0]) == out.image_size
    assert expected["pixel_values"][0].shape == out.pixel_values.shape, path.name
    np.testing.assert_allclose(out.pixel_values, expected["pixel_values"][0], atol=1e-3, err_msg=path.name)
    if tile == 336:  # no real image is small enough to hit the pinpoint-order tie: PULSE's grid agrees too
      assert ip.anyres_grid_shape(out.image_size, PULSE.grid_pinpoints, tile) == out.grid_shape


def test_rgba_with_transparency_matches_transformers_white_composite():
  reference = hf_processor(336, hf_pinpoints())
  rgba = np.zeros((300, 500, 4), np.uint8)
  rgba[:, 250:] = (20, 40, 200, 255)
  rgba[100:200, 100:400, 3] = 128  # half-transparent band across both halves
  image = Image.fromarray(rgba)
  config = ip.ImageProcessorConfig(grid_pinpoints=hf_pinpoints(), transparency="white")
  np.testing.assert_allclose(ip.preprocess(image, config).pixel_values,
                             reference(image, return_tensors="np")["pixel_values"][0], atol=1e-3)


# --------------------------------------------------------------------------------------- grid arithmetic vs HF


def sample_sizes():
  edges = [1, 2, 5, 14, 31, 32, 33, 100, 223, 335, 336, 337, 500, 671, 672, 673, 1000, 1007, 1008, 1009, 2000,
           10000]
  rng = np.random.default_rng(0)
  randoms = [tuple(int(v) for v in rng.integers(1, 4000, size=2)) for _ in range(300)]
  # Sizes where h * (w_map / w) lands a hair below an integer: transformers' round(..., 7) changes the unpadded
  # shape there (for 336/14 and for the tiny 32/8 set-up respectively).
  float_edges = [(47, 1128), (55, 176), (88, 55), (88, 99), (49, 392), (98, 784), (103, 824), (107, 856)]
  return [(h, w) for h in edges for w in edges] + randoms + float_edges


@pytest.mark.parametrize("tile, patch, pinpoints", [(336, 14, None), (32, 8, TINY_PINPOINTS)])
def test_grid_arithmetic_matches_transformers(tile, patch, pinpoints):
  torch = pytest.importorskip("torch")
  modeling = pytest.importorskip("transformers.models.llava_next.modeling_llava_next")
  from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution

  pinpoints = pinpoints or hf_pinpoints()
  config = ip.ImageProcessorConfig(tile_size=tile, grid_pinpoints=pinpoints)
  hf_list = [list(p) for p in pinpoints]
  per_tile = tile // patch
  # The model-side packing (unpad + one image_newline per row) is the ground truth for the token count.
  model = SimpleNamespace(config=SimpleNamespace(
      vision_config=SimpleNamespace(image_size=tile, patch_size=patch), image_grid_pinpoints=hf_list))
  for size in sample_sizes():
    assert ip.select_best_resolution(size, pinpoints) == hf_select_best_resolution(size, hf_list), size
    rows, cols = ip.anyres_grid_shape(size, pinpoints, tile)
    assert (rows, cols) == modeling.get_anyres_image_grid_shape(size, hf_list, tile), size
    assert ip.num_views(size, config) == modeling.image_size_to_num_patches(size, hf_list, tile), size
    tile_map = torch.empty(1, rows * per_tile, cols * per_tile)
    assert ip.unpadded_features_shape(size, pinpoints, tile, patch) == tuple(
        modeling.unpad_image(tile_map, list(size)).shape[1:]), size
    _, feature_lens = modeling.LlavaNextModel.pack_image_features(
        model, [torch.empty(1 + rows * cols, per_tile * per_tile, 1)], torch.tensor([size]), "default",
        image_newline=torch.zeros(1))
    assert ip.num_image_features(size, config, patch, "spatial_unpad") == int(feature_lens[0]), size
    assert ip.num_image_features(size, config, patch, "flat") == per_tile * per_tile * (1 + rows * cols)


def test_small_images_tie_break_follows_llava_not_transformers():
  # LLaVA reads pinpoints as (w, h): a 100x100 image goes to 336 w x 672 h, i.e. 2 rows x 1 column.
  assert ip.anyres_grid_shape((100, 100), PULSE.grid_pinpoints, 336) == (2, 1)
  # transformers reads the same numbers as (h, w): 672 w x 336 h, 1 row x 2 columns.
  assert ip.anyres_grid_shape((100, 100), ip.LLAVA_V16_GRID_PINPOINTS_WH, 336) == (1, 2)
  out = ip.preprocess(Image.new("RGB", (100, 100), "white"))
  assert out.grid_shape == (2, 1)
  tiles = unnormalise(out.pixel_values[1:])
  # Upscaled to 336x336, centred in the 672x336 canvas: black above (tile 0) and below (tile 1) it.
  np.testing.assert_allclose(tiles[0, :, :168], 0, atol=1e-5)
  np.testing.assert_allclose(tiles[0, :, 168:], 1, atol=1e-5)
  np.testing.assert_allclose(tiles[1, :, :168], 1, atol=1e-5)
  np.testing.assert_allclose(tiles[1, :, 168:], 0, atol=1e-5)
  np.testing.assert_allclose(unnormalise(out.pixel_values[0]), 1, atol=1e-5)


def test_tiles_are_row_major_and_global_view_is_squashed():
  # 1344 x 1344 image in four coloured quadrants: halved into the 672x672 canvas, one quadrant per tile.
  colours = np.asarray([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)])
  rgb = np.zeros((1344, 1344, 3), np.uint8)
  for i, colour in enumerate(colours):
    rgb[(i // 2) * 672:(i // 2 + 1) * 672, (i % 2) * 672:(i % 2 + 1) * 672] = colour
  out = ip.preprocess(Image.fromarray(rgb))
  assert out.grid_shape == (2, 2)
  views = unnormalise(out.pixel_values)
  for i, colour in enumerate(colours):
    assert_uniform(views[1 + i, :, 4:-4, 4:-4], colour / 255)  # borders blur into the neighbours
  assert_uniform(views[0, :, 60:110, 220:280], colours[1] / 255)  # top right quarter of the global view
  assert_uniform(views[0, :, 220:280, 60:110], colours[2] / 255)  # bottom left


# ---------------------------------------------------------------------------------------- modes, sizes, EXIF


def gradient_rgb(height=60, width=90) -> Image.Image:
  y, x = np.mgrid[0:height, 0:width]
  return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "1", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_any_mode_gives_valid_views(mode):
  source = gradient_rgb()
  image = source.convert("L").convert(mode) if mode in ("I;16", "I", "F") else source.convert(mode)
  out = ip.preprocess(image)
  assert out.pixel_values.shape == (ip.num_views((60, 90), PULSE), 3, 336, 336)
  views = unnormalise(out.pixel_values)
  assert np.isfinite(views).all() and views.min() > -1e-5 and views.max() < 1 + 1e-5
  if mode in ("L", "LA", "1", "I;16"):
    np.testing.assert_allclose(views[:, 0], views[:, 1], atol=1e-5)
    np.testing.assert_allclose(views[:, 1], views[:, 2], atol=1e-5)
  if mode == "RGBA":  # opaque alpha: identical to the RGB image
    np.testing.assert_array_equal(out.pixel_values, ip.preprocess(source).pixel_values)


def test_sixteen_bit_greys_are_scaled_not_clipped():
  for value, expected in [(0, 0.0), (128 * 257, 128 / 255), (65535, 1.0)]:
    image = Image.fromarray(np.full((40, 40), value, np.uint16))
    assert image.mode == "I;16"
    np.testing.assert_allclose(unnormalise(ip.preprocess(image).pixel_values[0]), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_white_by_default_and_stored_colour_with_drop(mode):
  if mode == "P":
    image = Image.new("P", (50, 50), 0)
    image.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    stored = (200 / 255, 10 / 255, 10 / 255)
  else:
    image = Image.new(mode, (50, 50), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    stored = (0.0, 0.0, 0.0)
  white = unnormalise(ip.preprocess(image).pixel_values[0])
  dropped = unnormalise(ip.preprocess(image, ip.ImageProcessorConfig(transparency="drop")).pixel_values[0])
  np.testing.assert_allclose(white, 1, atol=1e-5)
  assert_uniform(dropped, stored)


@pytest.mark.parametrize("width, height, grid", [(5, 5, (2, 1)), (1, 1000, (3, 1)), (1000, 1, (1, 3)),
                                                 (10000, 3000, (1, 3))])
def test_tiny_and_huge_images(width, height, grid):
  out = ip.preprocess(Image.new("RGB", (width, height), (30, 200, 90)))
  assert out.grid_shape == grid and out.image_size == (height, width)
  assert out.pixel_values.shape == (1 + grid[0] * grid[1], 3, 336, 336)
  views = unnormalise(out.pixel_values)
  assert_uniform(views[0], np.asarray([30, 200, 90]) / 255)
  # Even a 1-px-wide image keeps at least one column of content in the padded canvas (LLaVA's ceil).
  assert (views[1:] > 0.5).any()
  # A 1-px strip unpads to an empty tile map, leaving the global view's 576 features (transformers agrees).
  assert ip.num_image_features((height, width), PULSE, 14, "spatial_unpad") >= 576


def test_load_image_applies_exif_orientation(tmp_path):
  rgb = np.zeros((20, 40, 3), np.uint8)
  rgb[:, 20:] = 255  # stored landscape: left half black, right half white
  exif = Image.Exif()
  exif[0x0112] = 6  # display rotated 90 degrees clockwise
  path = tmp_path / "phone.jpg"
  Image.fromarray(rgb).save(path, exif=exif, quality=95)
  assert Image.open(path).size == (40, 20)
  image = ip.load_image(path)
  assert image.size == (20, 40)
  upright = np.asarray(image.convert("L"), np.float32)
  assert upright[:18].mean() < 30 and upright[22:].mean() > 225  # black on top after the clockwise turn
  assert ip.preprocess(image).image_size == (40, 20)


def test_load_image_accepts_bytes(real_ecg_dir):
  path = real_ecg_dir / "images" / "ecg00054.png"
  from_bytes = ip.load_image(path.read_bytes())
  np.testing.assert_array_equal(np.asarray(from_bytes), np.asarray(ip.load_image(path)))


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("source", ["ecg00002.png", "ecg00026.jpg", "ecg00019.bmp", None])
def test_truncated_or_garbage_files_raise_image_error_naming_the_file(real_ecg_dir, tmp_path, source):
  if source is None:
    data, name = b"this is not an image at all" * 10, "garbage.png"
  else:
    full = (real_ecg_dir / "images" / source).read_bytes()
    data, name = full[:len(full) // 2], f"cut-{source}"
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(ImageError, match=name):
    ip.load_image(path)
  with pytest.raises(ImageError, match="-byte image"):
    ip.load_image(data)


def test_missing_file_raises_image_error(tmp_path):
  with pytest.raises(ImageError, match="nowhere.png"):
    ip.load_image(tmp_path / "nowhere.png")


def test_lazily_opened_truncated_image_fails_in_preprocess_with_its_name(real_ecg_dir, tmp_path):
  full = (real_ecg_dir / "images" / "ecg00002.png").read_bytes()
  path = tmp_path / "lazy.png"
  path.write_bytes(full[:len(full) // 3])
  with pytest.raises(ImageError, match="lazy.png"):
    ip.preprocess(Image.open(path))


def test_zero_size_image_raises_image_error():
  with pytest.raises(ImageError, match="sample-42.*zero size"):
    ip.preprocess(Image.new("RGB", (0, 7)), name="sample-42")
  with pytest.raises(ImageError, match="zero size"):
    ip.preprocess(Image.new("L", (7, 0)))


def test_config_is_validated_and_hashable():
  config = ip.ImageProcessorConfig(tile_size=32, grid_pinpoints=[[32, 64], [64, 32]], image_mean=[0.5] * 3)
  assert config.grid_pinpoints == ((32, 64), (64, 32)) and hash(config) == hash(ip.ImageProcessorConfig(
      tile_size=32, grid_pinpoints=((32, 64), (64, 32)), image_mean=(0.5, 0.5, 0.5)))
  assert ip.pinpoints_from_llava(ip.LLAVA_V16_GRID_PINPOINTS_WH) == PULSE.grid_pinpoints
  for bad in [dict(grid_pinpoints=((336, 500),)), dict(grid_pinpoints=()), dict(resample="fancy"),
              dict(transparency="black"), dict(image_std=(0.2, 0.0, 0.2)), dict(tile_size=0)]:
    with pytest.raises(ConfigError):
      ip.ImageProcessorConfig(**bad)
  with pytest.raises(ConfigError, match="merge type"):
    ip.num_image_features((100, 100), PULSE, 14, "spatial")

"""Random tiny transformers models (the numerics oracle) and helpers to compare them with ours.

Imported only by tests that have already called pytest.importorskip("torch").
"""

import dataclasses

import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

PINPOINTS = [[32, 64], [64, 32], [64, 64]]
IMAGE_TOKEN = 250


@dataclasses.dataclass(frozen=True)
class TinySpec:
  name: str
  num_heads: int
  num_kv_heads: int


SPECS = (TinySpec("mha", 4, 4), TinySpec("gqa", 4, 2))


def tiny_llava_next(spec: TinySpec, seed: int = 0) -> LlavaNextForConditionalGeneration:
  """A random LLaVA-NeXT: CLIP 32 px / patch 8 (16 tokens per view), 3 layers; LLaMA 64 x 2 layers, vocab 256.

  Weights are drawn with a larger std than transformers' init (0.02) so that every layer matters numerically.
  """
  torch.manual_seed(seed)
  vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8)
  text = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                     max_position_embeddings=256, rope_theta=500.0, rms_norm_eps=1e-5)
  config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                           image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                           vision_feature_select_strategy="default")
  model = LlavaNextForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "layrnorm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.15 * torch.randn_like(p))
  return model


def to_numpy(t: torch.Tensor) -> np.ndarray:
  return t.detach().float().numpy()

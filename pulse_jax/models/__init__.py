"""Flax NNX modules of PULSE: the CLIP vision tower, the projector, the LLaMA decoder and PulseModel."""

from pulse_jax.models.clip import CLIPVisionTower
from pulse_jax.models.config import PulseConfig, TextConfig, VisionConfig
from pulse_jax.models.llama import KVCache, LlamaForCausalLM, LlamaModel
from pulse_jax.models.llava import PulseModel, Projector, feature_layout, num_image_tokens

__all__ = [
    "CLIPVisionTower", "KVCache", "LlamaForCausalLM", "LlamaModel", "Projector", "PulseConfig", "PulseModel",
    "TextConfig", "VisionConfig", "feature_layout", "num_image_tokens",
]

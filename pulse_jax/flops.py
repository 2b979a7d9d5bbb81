"""Model FLOPs of a PULSE training step, and the peak throughput of the chips it runs on (for MFU).

Counted as matmul FLOPs (2 per multiply-add) of the work the model needs, not of what XLA executes, as MFU is
usually defined (MaxText, PaLM): rematerialised forward passes are not counted, and causal attention counts the
half of the T x T score matrix below the diagonal (the model computes between that and all of it, depending on
its chunking). The vision tower is counted over every padded view, which it does process. Training costs 3x the
forward pass (forward, then gradients w.r.t. activations and weights) for the trained parts; the frozen vision
tower runs forward only, as no gradient is ever taken through it.
"""

from pulse_jax.models.config import PulseConfig, TextConfig, VisionConfig

# Dense bf16 peak FLOP/s per device, by a substring of jax.Device.device_kind (first match wins, so "TPU v5 lite"
# (v5e) comes before "TPU v5" (v5p)). Vendor data sheets, without sparsity.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device, or None when unknown (CPUs): MFU is then not reported."""
  for name, flops in PEAK_FLOPS:
    if name in device_kind:
      return flops
  return None


def lm_forward_flops_per_token(text: TextConfig, seq_len: int) -> float:
  """Forward FLOPs of the decoder and lm_head for one token of a length-`seq_len` sequence."""
  e, h = text.hidden_size, text.head_dim
  projections = e * h * (2 * text.num_heads + 2 * text.num_kv_heads)  # q, o and k, v
  mlp = 3 * e * text.intermediate_size
  attention = seq_len * text.num_heads * h  # scores and the weighted sum of values, over seq_len / 2 keys
  return 2 * (text.num_layers * (projections + mlp + attention) + e * text.vocab_size)


def vision_forward_flops_per_view(vision: VisionConfig) -> float:
  """Forward FLOPs of the CLIP tower for one view, over the layers PULSE's feature layer actually runs."""
  tokens, e = vision.patches_per_side**2 + 1, vision.hidden_size
  patch = (vision.patches_per_side**2) * vision.patch_size**2 * vision.num_channels * e
  layer = tokens * (4 * e * e + 2 * e * vision.intermediate_size) + 2 * tokens * tokens * e
  return 2 * (patch + vision.layers_needed * layer)


def projector_forward_flops_per_view(config: PulseConfig) -> float:
  tokens, text = config.vision.tokens_per_view, config.text.hidden_size
  return 2 * tokens * (config.vision.hidden_size * text + text * text)


def train_step_flops(config: PulseConfig, *, batch: int, seq_len: int, vision_trained: bool = False) -> float:
  """Model FLOPs of one training step over `batch` rows of `seq_len` tokens, each row with max_views views."""
  views = batch * config.max_views
  vision = vision_forward_flops_per_view(config.vision) * views * (3 if vision_trained else 1)
  projector = 3 * projector_forward_flops_per_view(config) * views
  lm = 3 * lm_forward_flops_per_token(config.text, seq_len) * batch * seq_len
  return vision + projector + lm

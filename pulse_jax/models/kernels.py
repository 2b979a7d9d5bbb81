"""Which full-sequence causal attention a trace runs (training, held-out loss, a prompt's prefill).

`PulseConfig.attention` names it: "xla" (common.causal_attention, everywhere), "splash" (the TPU Pallas kernel,
pulse_jax.models.splash), "cudnn" (cuDNN's fused kernel on NVIDIA GPUs, pulse_jax.models.cudnn) or "auto", which
picks by the platform of the mesh in context: splash on TPU, cuDNN on GPU when the compute dtype and head size
are ones it takes (bfloat16 / float16; a multiple of 8 up to 128), XLA otherwise and without a mesh. A decode step
reads its KV cache through XLA whatever this says.
"""

from collections.abc import Callable

import jax

from pulse_jax.models.common import causal_attention, mesh_platform
from pulse_jax.models.cudnn import cudnn_causal_attention, cudnn_takes
from pulse_jax.models.splash import splash_causal_attention

_FUNCTIONS = {"xla": causal_attention, "splash": splash_causal_attention, "cudnn": cudnn_causal_attention}


def resolve(implementation: str, platform: str | None, dtype: str, head_dim: int) -> str:
  """The attention ("xla", "splash" or "cudnn") that `implementation` means on devices of `platform` ("tpu",
  "gpu", "cpu"; None for no mesh) at compute `dtype` with heads of `head_dim`."""
  if implementation != "auto":
    return implementation
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and cudnn_takes(dtype, head_dim):
    return "cudnn"
  return "xla"


def causal_attention_for(implementation: str, dtype: str, head_dim: int) -> Callable[..., jax.Array]:
  """The function f(q [B, T, N, H], k, v [B, T, K, H], valid bool[B, T]) -> [B, T, N, H] this trace runs."""
  return _FUNCTIONS[resolve(implementation, mesh_platform(), dtype, head_dim)]

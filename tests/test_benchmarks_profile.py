"""The benchmarks' op-time profile (benchmarks/op_profile.py)."""

import jax
import jax.numpy as jnp

from benchmarks.op_profile import profile_breakdown


def test_profile_breakdown_counts_only_the_ops_of_the_step():
  @jax.jit
  def step(a, b):
    return jnp.tanh(a @ b).sum()

  a = jnp.ones((256, 256))
  breakdown = profile_breakdown(lambda: jax.block_until_ready(step(a, a)), top=20)

  kinds = [kind for kind, _ in breakdown]
  (top_kind, top_share), shares = breakdown[0], [share for _, share in breakdown]
  assert ("dot" in top_kind or "fusion" in top_kind) and top_share > 0.5, breakdown  # the matmul
  assert all(0 < share <= 1 for share in shares) and sum(shares) <= 1 + 1e-9, breakdown
  # No Python, compilation or runtime bookkeeping events; kinds are suffix-free HLO names.
  assert all(kind == kind.lower() and not kind.startswith("$") and "compile" not in kind for kind in kinds), kinds
  assert not any("thunk" in kind or "threadpool" in kind for kind in kinds), kinds
  assert len(set(kinds)) == len(kinds) and not any(kind[-1].isdigit() for kind in kinds), kinds

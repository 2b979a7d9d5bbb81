"""Test set-up: 8 fake CPU devices (set before JAX loads) and absl flags marked parsed for grain workers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Real recordings and images kept beside the repository (../shared/real_ecg); CI lays shared/ out the same way.
REAL_ECG = REPO_ROOT.parent / "shared" / "real_ecg"


@pytest.fixture(scope="session")
def real_ecg_dir() -> pathlib.Path:
  if not REAL_ECG.is_dir():
    pytest.fail(f"real ECG data not found at {REAL_ECG}")
  return REAL_ECG

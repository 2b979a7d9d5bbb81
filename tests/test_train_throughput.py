"""benchmarks/train_throughput.py: the step time, tokens/s and MFU of a config, on the test mesh of 8 CPU devices."""

import pytest

from benchmarks import train_throughput
from pulse_jax import flops
from tests.train_helpers import small_config


def test_figures_of_the_configured_step(monkeypatch, capsys):
  monkeypatch.setattr(flops, "peak_flops", lambda kind: 1e9)  # CPUs have no peak: pretend, to reach the MFU
  config = small_config()
  figures = train_throughput.measure(config, steps=2)
  batch, seq_len, devices = config.train.global_batch, config.data.seq_len, 8
  assert figures["device"] == f"{devices} x cpu" and figures["step_s"] > 0 and figures["loss"] > 0
  assert figures["attention"] == "xla"
  assert figures["tokens_per_s"] == pytest.approx(batch * seq_len / figures["step_s"])
  model_flops = flops.train_step_flops(train_throughput.model_config(config.model), batch=batch, seq_len=seq_len)
  assert figures["model_tflop_per_step"] == pytest.approx(model_flops / 1e12)  # the tower is frozen
  assert figures["mfu"] == pytest.approx(model_flops / (figures["step_s"] * devices * 1e9))


def test_the_report_names_every_figure(monkeypatch, capsys):
  figures = {"device": "1 x NVIDIA H200", "attention": "cudnn", "compile_s": 30.0, "step_s": 0.5,
             "tokens_per_s": 65536.0, "model_tflop_per_step": 200.0, "mfu": 0.404, "peak_gib_per_device": 70.25,
             "loss": 10.5}
  monkeypatch.setattr(train_throughput, "measure", lambda config, steps: figures)
  train_throughput.main(["--config", "configs/pulse_7b.py", "--steps", "3", "--config.train.global_batch=8"])
  out = capsys.readouterr().out
  assert "config: configs/pulse_7b.py --config.train.global_batch=8" in out
  assert "LM 4096 x 32 layers, batch 8 x 4096 tokens, remat full, bfloat16 compute on float32 weights" in out
  assert "device: 1 x NVIDIA H200; cudnn attention; compile 30.0 s; loss 10.5000" in out
  assert "step time 0.5000 s, 65,536 tokens/s, 200.00 model TFLOP per step" in out
  assert "peak memory per device: 70.2 GiB" in out and "MFU: 40.4%" in out

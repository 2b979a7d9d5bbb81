"""`pulse-jax demo` end to end at toy scale (every stage wired: build, tokenizer, tower, alignment, training, eval,
export), and its verdict rule."""

import json

import pytest

from pulse_jax import demo, pretrain_tower


def _report(f1, auc, majority_f1, majority_auc):
  return {"sets": {demo.DETECTION_SET: {"strict": {"f1": f1, "auc": auc},
                                        "majority": {"f1": majority_f1, "auc": majority_auc}}}}


def test_verdict_needs_both_margins():
  assert demo.verdict(_report(30.0, 60.0, 8.0, 50.0)).beats_majority
  assert not demo.verdict(_report(30.0, 52.0, 8.0, 50.0)).beats_majority  # F1 alone: no reading of the image
  assert not demo.verdict(_report(15.0, 70.0, 8.0, 50.0)).beats_majority


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
  """12 records per collection, a tower of 2 steps on 32 sheets, 2 alignment and 2 training steps: the verdict is
  meaningless at this size, the wiring is not."""
  tower = pretrain_tower.Recipe(pages=32, steps=2, batch=16, held_out=16)
  run = dict(records=12, tower=tower, align_steps=2, sets=(demo.DETECTION_SET, "csn-test-no-cot"))
  status = demo.demo(tmp_path, steps=2, **run)
  out = capsys.readouterr().out
  assert status in (0, 1)  # 1: the untrained model does not beat the majority answer, as expected
  assert "ecg_instruct/synthetic_12_detection: ptbxl" in out and "read back bit-identical" in out
  assert f"abnormality detection ({demo.DETECTION_SET}" in out
  report = json.loads(next((tmp_path / "run" / "eval").glob("*/*/report.json")).read_text())
  assert set(report["sets"]) == {demo.DETECTION_SET, "csn-test-no-cot"}
  assert (tmp_path / "tower" / "0").is_dir() and (tmp_path / "align" / "checkpoints" / "2").is_dir()
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
  assert {"config.json", "tokenizer.model"} <= {p.name for p in (tmp_path / "export" / "hf").iterdir()}
  # The tower stays frozen through both stages.
  from pulse_jax.convert.orbax_params import restore
  pretrained, model, _ = restore(tmp_path / "tower")
  for stage in ("align", "run"):
    assert demo._same_arrays(pretrained["vision_tower"], restore(tmp_path / stage, model)[0]["vision_tower"])
  # A second run in the same workdir reuses the data, tokenizer, tower, checkpoints, predictions and export; one
  # with more steps resumes training and exports again.
  assert demo.demo(tmp_path, steps=2, **run) == status
  assert "pretrain-tower" not in capsys.readouterr().err
  demo.demo(tmp_path, steps=3, **dict(run, sets=(demo.DETECTION_SET,)))
  out = capsys.readouterr().out
  assert "read back bit-identical" in out and (tmp_path / "run" / "checkpoints" / "3").is_dir()


def test_summary_fails_without_the_detection_set(tmp_path, capsys):
  (tmp_path / "report.json").write_text(json.dumps({"sets": {}}))
  assert demo._summary(tmp_path, 1.0) == 1
  assert f"FAILED: {demo.DETECTION_SET} was not evaluated" in capsys.readouterr().out

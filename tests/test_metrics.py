"""ECGBench scorers on hand-made outputs with hand-computed scores, paper rules and strict rules side by side."""

import math
import random

import pytest

from pulse_jax import metrics
from pulse_jax.errors import ConfigError, DataError

PTB = metrics.BENCH_SETS["ptb-test"]
CPSC = metrics.BENCH_SETS["cpsc-test"]
CODE15 = metrics.BENCH_SETS["code15-test"]


def test_registry_has_the_nine_sets_with_their_sizes():
  assert {name: (b.kind, b.size) for name, b in metrics.BENCH_SETS.items()} == {
      "ptb-test": ("multilabel", 2082), "ptb-test-report": ("report", 500), "code15-test": ("multilabel", 1400),
      "ecgqa-test": ("ecgqa", 1317), "cpsc-test": ("multilabel", 2061), "csn-test-no-cot": ("mcq", 1611),
      "g12-test-no-cot": ("mcq", 2026), "mmmu-ecg": ("mcq", 200), "arena": ("arena", 50)}
  assert PTB.labels == ("NORM", "MI", "STTC", "CD", "HYP")
  assert CPSC.labels == ("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
  assert CODE15.labels == ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
  assert metrics.BENCH_SETS["mmmu-ecg"].labels == tuple("ABCD")
  assert metrics.PAPER_RESULTS["PULSE-7B"]["cpsc-test"] == {"auc": 76.9, "f1": 57.6, "hamming_loss": 8.6}
  assert metrics.PAPER_RESULTS["GPT-4o"]["arena"] == {"arena_score": 33.5}


@pytest.mark.parametrize("text, paper, strict", [
    ("ABNORMAL", ["NORM"], []),                      # NORM inside ABNORMAL
    ("AFL", ["AF"], []),                             # AF inside atrial flutter's code
    ("LAFB and LBBB", ["AF", "LBBB"], ["LBBB"]),    # AF inside LAFB
    ("AF, RBBB", ["AF", "RBBB"], ["AF", "RBBB"]),
    ("(AF);I-AVB", ["AF", "I-AVB"], ["AF", "I-AVB"]),
    ("II-AVB", ["I-AVB"], []),
    ("STD", ["STD"], ["STD"]),
    ("Reasoning: no STE. Answer: STD", ["STD", "STE"], ["STD"]),  # strict reads only the final answer
])
def test_cpsc_label_extraction(text, paper, strict):
  assert metrics.predicted_labels(text, CPSC, strict=False) == paper
  assert metrics.predicted_labels(text, CPSC, strict=True) == strict


@pytest.mark.parametrize("text, paper, strict", [
    ("Answer: NORM", ["NORM"], ["NORM"]),
    ("Answer: ABNORMAL, RBBB", ["ABNORMAL", "RBBB"], ["ABNORMAL", "RBBB"]),
    ("NORM? Answer: ABNORMAL", ["ABNORMAL"], ["ABNORMAL"]),   # cut after the last "Answer:"
    ("ABNORMAL. Answer: SB", ["SB"], ["SB"]),
    ("Answer: ST-T changes, SB", ["SB", "ST"], ["SB"]),      # ST (sinus tachycardia) inside ST-T
    ("Answer: 1dAVb(1st degree av block)", ["1dAVb"], ["1dAVb"]),
])
def test_code15_prediction_rules(text, paper, strict):
  assert metrics.predicted_labels(text, CODE15, strict=False) == paper
  assert metrics.predicted_labels(text, CODE15, strict=True) == strict


def test_code15_gold_rules():
  assert metrics.gold_labels("NORM", CODE15, strict=False) == ["NORM"]
  assert metrics.gold_labels("ABNORMAL", CODE15, strict=False) == ["ABNORMAL"]
  assert metrics.gold_labels("RBBB(right bundle branch block)", CODE15, strict=False) == ["RBBB"]
  assert metrics.gold_labels("RBBB(right bundle branch block)", CODE15, strict=True) == ["RBBB"]
  assert metrics.gold_labels("ABNORMAL", CODE15, strict=True) == ["ABNORMAL"]


def test_ptb_scores_hand_computed():
  # Classes (gold): CD, MI, NORM, STTC. Paper reads NORM inside "ABNORMAL"; strict does not.
  golds = ["NORM", "MI, STTC", "CD", "NORM"]
  outputs = ["ABNORMAL ECG: MI", "MI STTC", "NORM", "NORM"]
  paper = metrics.score_set("ptb-test", outputs, golds)
  # Per class F1: CD 0, MI 2/3, NORM 4/5, STTC 1. Balanced accuracy: CD 1/2, MI 5/6, NORM 3/4, STTC 1.
  assert paper["f1"] == pytest.approx(100 * (0 + 2 / 3 + 4 / 5 + 1) / 4)
  assert paper["auc"] == pytest.approx(100 * (1 / 2 + 5 / 6 + 3 / 4 + 1) / 4)
  assert paper["hamming_loss"] == pytest.approx(100 * 3 / 16)
  assert paper["classes"] == ["CD", "MI", "NORM", "STTC"]
  assert (paper["mode"], paper["n"], paper["expected_n"], paper["complete"]) == ("paper", 4, 2082, False)
  strict = metrics.score_set("ptb-test", outputs, golds, strict=True)
  # Sample 0 now predicts MI only: NORM F1 1/2 and balanced accuracy 1/2.
  assert strict["f1"] == pytest.approx(100 * (0 + 2 / 3 + 1 / 2 + 1) / 4)
  assert strict["auc"] == pytest.approx(100 * (1 / 2 + 5 / 6 + 1 / 2 + 1) / 4)
  assert strict["hamming_loss"] == pytest.approx(100 * 4 / 16)


def test_predicted_labels_missing_from_gold_are_dropped():
  result = metrics.score_set("ptb-test", ["NORM HYP", "MI"], ["NORM", "MI"])
  assert result["classes"] == ["MI", "NORM"]
  assert (result["f1"], result["auc"], result["hamming_loss"]) == (100.0, 100.0, 0.0)


def test_constant_class_makes_paper_auc_nan_and_strict_skips_it():
  golds, outputs = ["NORM", "NORM, MI"], ["NORM", "NORM"]   # every sample has NORM: its AUC is undefined
  paper = metrics.score_set("ptb-test", outputs, golds)
  assert math.isnan(paper["auc"])
  assert paper["auc_undefined"] == ["NORM"]
  assert paper["f1"] == pytest.approx(50.0)                  # MI 0, NORM 1
  strict = metrics.score_set("ptb-test", outputs, golds, strict=True)
  assert strict["auc"] == pytest.approx(50.0)                # MI alone: recall 0, specificity 1
  assert math.isnan(strict["per_class_auc"]["NORM"])


def test_code15_scores_hand_computed():
  golds = ["NORM", "ABNORMAL", "RBBB(right bundle branch block)", "AF(atrial fibrillation)"]
  outputs = ["Answer: NORM", "Answer: ABNORMAL", "Answer: RBBB", "Answer: AFL"]
  paper = metrics.score_set("code15-test", outputs, golds)
  assert (paper["f1"], paper["auc"], paper["hamming_loss"]) == (100.0, 100.0, 0.0)
  strict = metrics.score_set("code15-test", outputs, golds, strict=True)
  assert strict["classes"] == ["ABNORMAL", "AF", "NORM", "RBBB"]
  assert strict["f1"] == pytest.approx(75.0)
  assert strict["auc"] == pytest.approx(87.5)
  assert strict["hamming_loss"] == pytest.approx(100 / 16)


@pytest.mark.parametrize("text, paper, strict", [
    ("C", "C", "C"),
    ("C\n", None, "C"),                                        # paper compares the raw text
    ("(C)", None, "C"),
    ("C. Atrial flutter", "C", "C"),
    ("The answer is D. Based on RBBB.", "B", "D"),             # paper: "B." (from RBBB.) is tried before "D."
    ("The answer is a normal ECG. Answer: (F)", "G", "F"),      # paper: "G." of "ECG."; strict: "a" is no letter
    ("The correct option is G", "G", "G"),
    ("The correct option is 7. Answer: B", None, "B"),          # paper stops at a non-letter
    ("The correct option is ", None, None),                    # the paper raises IndexError here
    ("Answer: Given the ECG, E", "C", "E"),                    # paper: C of "ECG" is tried before E
    ("It shows H. pylori? no. Answer: A", "H", "A"),
    ("I am not sure", None, None),
])
def test_mcq_letter_extraction_order(text, paper, strict):
  assert metrics.extract_choice(text, strict=False) == paper
  assert metrics.extract_choice(text, strict=True) == strict


def test_mmmu_strict_rejects_letters_beyond_d():
  assert metrics.extract_choice("E.", "ABCD", strict=False) == "E"
  assert metrics.extract_choice("E.", "ABCD", strict=True) is None


def test_mcq_random_fallback_is_one_seeded_sequence_in_file_order():
  outputs = ["??", "C", "no idea", "hmm"]
  csn = metrics.score_set("csn-test-no-cot", outputs, ["B. sinus rhythm", "C. AF", "A. LBBB", "A. RBBB"])
  # random.Random(42) draws B, A, E from A-H for the three unparsed outputs.
  assert csn["choices"] == ["B", "C", "A", "E"]
  assert csn["n_unparsed"] == 3
  assert csn["accuracy"] == pytest.approx(75.0)
  mmmu = metrics.score_set("mmmu-ecg", outputs, ["A", "C", "A", "C"])
  assert mmmu["choices"] == ["A", "C", "A", "C"]             # A-D draws: A, A, C
  assert mmmu["accuracy"] == pytest.approx(100.0)
  # One generator shared across files continues the sequence, as the paper's single random.seed(42) does.
  shared = random.Random(42)
  first = metrics.score_set("mmmu-ecg", ["?"], ["A"], rng=shared)["choices"]
  second = metrics.score_set("g12-test-no-cot", ["?"], ["A"], rng=shared)["choices"]
  assert first + second == ["A", "A"]
  assert metrics.score_set("g12-test-no-cot", ["?"], ["A"])["choices"] == ["B"]


def test_mmmu_paper_gold_is_the_whole_answer_and_csn_the_first_character():
  assert metrics.score_set("mmmu-ecg", ["B"], ["B. left axis"])["accuracy"] == 0.0
  assert metrics.score_set("mmmu-ecg", ["B"], ["B. left axis"], strict=True)["accuracy"] == 100.0
  assert metrics.score_set("csn-test-no-cot", ["B"], ["B. left axis"])["accuracy"] == 100.0


LEADS_PROMPT = ("Which leads show ST elevation? Options: lead I, lead III, lead V3, none\n"
                "Only answer based on the given Options without any explanation.")
YES_NO_PROMPT = ("Is there atrial fibrillation? Options: yes, no, not sure "
                 "Only answer based on the given Options without any explanation.")


def test_ecgqa_options():
  assert metrics.ecgqa_options(LEADS_PROMPT, strict=False) == ["lead I", "lead III", "lead V3", "none"]
  assert metrics.ecgqa_options(YES_NO_PROMPT.replace("Options without", "options without"), strict=True) == [
      "yes", "no", "not sure"]


def test_ecgqa_case_bug_and_substring_collisions():
  outputs = ["lead III", "not sure", "yes", "lead V3/lead I"]
  golds = [["lead III"], ["not sure"], ["yes"], ["lead I", "lead V3"]]
  prompts = [LEADS_PROMPT, YES_NO_PROMPT, YES_NO_PROMPT, LEADS_PROMPT]
  paper = metrics.score_set("ecgqa-test", outputs, golds, prompts)
  # Options with capitals never match the lower-cased output; "no" matches inside "not sure".
  assert paper["correct"] == [False, False, True, False]
  assert paper["accuracy"] == pytest.approx(25.0)
  strict = metrics.score_set("ecgqa-test", outputs, golds, prompts, strict=True)
  assert strict["correct"] == [True, True, True, True]
  with pytest.raises(DataError, match="prompts"):
    metrics.score_set("ecgqa-test", outputs, golds)


def test_ecgqa_paper_mode_matches_lower_case_options():
  assert metrics.score_set("ecgqa-test", ["None."], [["none"]], [LEADS_PROMPT])["accuracy"] == 100.0


@pytest.mark.parametrize("text, findings", [
    ("Sinus rhythm. Left ventricular hypertrophy. No ST elevation.",
     {"sinus rhythm", "left ventricular hypertrophy"}),
    ("ST elevation is absent; AFib without PVCs.", {"atrial fibrillation"}),
    ("There is no evidence of atrial fibrillation or atrial flutter.", set()),
    ("Cannot rule out myocardial infarction.", {"myocardial infarction"}),
    ("No ST elevation, but ST depression in V5.", {"ST depression"}),
    ("Incomplete right bundle branch block, otherwise normal ECG.",
     {"incomplete right bundle branch block", "normal ECG"}),
    ("Abnormal ECG: RBBB and first-degree atrioventricular block.",
     {"right bundle branch block", "first degree AV block"}),
    ("This is not a normal ECG.", set()),
])
def test_report_findings_synonyms_and_negation(text, findings):
  assert metrics.report_findings(text) == findings


def test_report_proxy_scores_hand_computed():
  references = ["Sinus rhythm. Left ventricular hypertrophy. No ST elevation.", "Normal ECG.", "Paper speed 25."]
  generated = ["sinus rhythm, LVH, ST elevation in V1-V3", "Atrial fibrillation.", "Nothing to report."]
  result = metrics.score_set("ptb-test-report", generated, references)
  # Sample 0: P = {SR, LVH, STE}, G = {SR, LVH} -> 2*2/5. Sample 1: disjoint -> 0. Sample 2: both empty -> 100.
  assert result["per_sample_f1"] == pytest.approx([80.0, 0.0, 100.0])
  assert result["proxy_f1"] == pytest.approx(60.0)
  assert result["proxy_micro_f1"] == pytest.approx(100 * 2 * 2 / (3 + 2 + 1 + 1))


def test_arena_without_judge_gets_the_proxy_over_all_turns():
  golds = [[{"question": "Rhythm?", "answer": "Atrial fibrillation."},
            {"question": "Anything else?", "answer": "Left bundle branch block."}]]
  result = metrics.score_set("arena", [["AF.", "LBBB and no ST elevation."]], golds)
  assert result["proxy_f1"] == pytest.approx(100.0)
  assert "arena_score" not in result


def test_front_door_errors():
  with pytest.raises(ConfigError, match="unknown ECGBench set"):
    metrics.score_set("ptb-valid", [], [])
  with pytest.raises(DataError, match="2 predictions for 1"):
    metrics.score_set("ptb-test", ["NORM", "MI"], ["NORM"])
  with pytest.raises(DataError, match="no samples"):
    metrics.score_set("csn-test-no-cot", [], [])
  with pytest.raises(DataError, match="no gold answer"):
    metrics.score_set("ptb-test", ["NORM"], ["sinus rhythm"])


def test_comparison_table_puts_both_modes_beside_the_paper():
  golds, outputs = ["NORM", "MI"], ["NORM", "MI"]
  results = [metrics.score_set("ptb-test", outputs, golds, strict=s) for s in (False, True)]
  results.append(metrics.score_set("mmmu-ecg", ["A"], ["A"]))
  table = metrics.comparison_table(results).splitlines()
  assert table[0] == "| set | metric | ours (paper rules) | ours (strict) | PULSE-7B | GPT-4o | Random |"
  assert "| ptb-test | auc | 100.0 | 100.0 | 82.4 | 55.6 | 50.3 |" in table
  assert "| ptb-test | hamming_loss | 0.0 | 0.0 | 11.0 | 26.2 | 50.1 |" in table
  assert "| mmmu-ecg | accuracy | 100.0 | – | 58.0 | 43.5 | 24.2 |" in table
  assert len(table) == 2 + 3 + 1


def test_majority_baseline_repeats_the_most_frequent_gold_answer():
  golds = ["NORM", "MI", "NORM", "STTC; CD", "NORM", "MI"]
  baseline = metrics.majority_baseline("ptb-test", golds)
  assert baseline["mode"] == "majority" and baseline["answer"] == "NORM"
  # Only NORM is ever predicted: F1 2*3/(3+6) for NORM, 0 for MI, STTC, CD; AUC 50 for every class.
  assert baseline["f1"] == pytest.approx(100 * (6 / 9) / 4)
  assert baseline["auc"] == pytest.approx(50.0)
  assert metrics.majority_baseline("csn-test-no-cot", ["B", "C", "B"])["accuracy"] == pytest.approx(200 / 3)
  # A tie goes to the answer seen first; ECG-QA golds are option lists.
  prompt = f"Is there X? Options: yes, no, not sure. {metrics.ECGQA_INSTRUCTION}"
  qa = metrics.majority_baseline("ecgqa-test", [["no"], ["yes"], ["yes"], ["no"]], [prompt] * 4)
  assert qa["answer"] == "no" and qa["accuracy"] == pytest.approx(50.0)
  assert metrics.majority_baseline("ptb-test-report", ["Sinus rhythm."]) is None


def test_comparison_table_adds_the_majority_column_when_given():
  golds = ["NORM", "MI", "NORM"]
  results = [metrics.score_set("ptb-test", ["NORM", "MI", "MI"], golds, strict=s) for s in (False, True)]
  results.append(metrics.majority_baseline("ptb-test", golds))
  table = metrics.comparison_table(results).splitlines()
  assert table[0] == ("| set | metric | ours (paper rules) | ours (strict) | majority answer (strict) | PULSE-7B | "
                      "GPT-4o | Random |")
  assert "| ptb-test | auc | 75.0 | 75.0 | 50.0 | 82.4 | 55.6 | 50.3 |" in table

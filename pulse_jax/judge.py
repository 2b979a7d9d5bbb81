"""LLM judge for ECGBench's open-ended sets (ptb-test-report, arena) through any OpenAI-compatible endpoint.

Protocol: POST {base_url}/chat/completions with {model, messages: [one user message], temperature: 0,
response_format: {"type": "json_object"}} and `Authorization: Bearer <key>`, the key read from the environment
variable that the config names; the judge's JSON is the reply's choices[0].message.content. Standard library
only (urllib.request, json), so any server that speaks the protocol works: OpenAI, vLLM, llama.cpp, LiteLLM.

Scoring, as the paper's eval_report.py and eval_arena.py do it:
- Report: Diagnosis, Form (the waveform aspect) and Rhythm, 0-10 each; per sample = mean of the three x 10;
  set score = mean over samples; per-aspect means x 10 beside it.
- Arena: one call per dialogue, which sees every question, the gold answers and the model's answers;
  Accuracy, Completeness and Instruction Adherence, 0-10 each; score = mean of all 3N aspect scores x 10
  (the same number as the mean of per-dialogue means, since every judged dialogue has three scores).
The rubric texts are ours, paraphrasing the paper's: anchors at 10/5/0, only the information in the ground truth
counts, length is ignored.

Failures: HTTP 429 and 5xx, connection errors and timeouts are retried with exponential backoff (a longer
Retry-After is honoured). A sample the endpoint refuses as a request (HTTP 400, 413, 422: a content filter, a
prompt too long), or whose answer is not a JSON object holding a numeric 0-10 score for every aspect, is a failed
sample: counted in `judge_failed`, listed with its reason in `judge_failures`, left out of the means, never
scored 0. Anything else stops the set's judging with JudgeError naming the URL and the cause (retries exhausted,
another HTTP status such as 401 or 404, a reply that is not a chat completion, every request of the set refused:
the requests themselves are wrong); the set keeps its offline scores and the report names the error
(metrics.score_set), and the evaluation asks the judge nothing more (evaluate.score_records).
"""

import concurrent.futures
import dataclasses
import hashlib
import http.client
import json
import logging
import math
import os
import pathlib
import re
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm import tqdm

from pulse_jax import jsonl
from pulse_jax.errors import ConfigError, DataError, JudgeError

_logger = logging.getLogger(__name__)

REPORT_ASPECTS: tuple[str, ...] = ("Diagnosis", "Form", "Rhythm")
ARENA_ASPECTS: tuple[str, ...] = ("Accuracy", "Completeness", "Instruction Adherence")

REPORT_RUBRIC = """\
You are a cardiologist checking an ECG report written by an AI system against the reference report that a \
physician wrote for the same ECG. Grade three aspects of the AI report, each with a whole number from 0 to 10.

Diagnosis: the diagnostic conclusions, such as infarction, ischaemia, hypertrophy, conduction blocks, or a \
normal ECG.
  10 = every diagnosis in the reference is stated and none is contradicted;
  5 = some reference diagnoses are stated while others are missing or contradicted;
  0 = no reference diagnosis is stated, or they are contradicted.
Form: the description of the waveforms, such as P waves, QRS complexes, ST segments, T waves, intervals, axis \
and voltages.
  10 = every waveform finding in the reference is described correctly;
  5 = some are described correctly while others are missing or wrong;
  0 = none is described correctly.
Rhythm: rhythm and rate, such as sinus rhythm, arrhythmias, ectopic beats, pacing and heart rate.
  10 = the rhythm findings of the reference are stated correctly;
  5 = they are partly correct;
  0 = they are missing or wrong.

Judge only the information that the reference report contains: a finding that the reference does not mention \
neither earns nor costs points. The length and wording of the AI report must not influence the grades.

Reply with one JSON object and nothing else, in this form:
{"Diagnosis": {"Score": <0-10>, "Explanation": "<one sentence>"}, \
"Form": {"Score": <0-10>, "Explanation": "<one sentence>"}, \
"Rhythm": {"Score": <0-10>, "Explanation": "<one sentence>"}}
"""

ARENA_RUBRIC = """\
You are a cardiologist grading an AI assistant's answers in a conversation about an ECG image. You are given \
the questions with reference answers written by experts, and the assistant's answers to the same questions \
(a later question may build on the assistant's earlier answer). Grade the assistant over the whole \
conversation on three aspects, each with a whole number from 0 to 10.

Accuracy: are the assistant's medical statements correct and consistent with the reference answers?
  10 = all correct; 5 = partly correct, with some errors; 0 = mostly wrong or contradicting the references.
Completeness: does the assistant cover the key points of the reference answers?
  10 = all key points; 5 = about half of them; 0 = none.
Instruction Adherence: does the assistant answer what each question asks, in the form it asks for?
  10 = fully; 5 = partly; 0 = it does not answer the questions.

The length of the answers must not influence the grades.

Reply with one JSON object and nothing else, in this form:
{"Accuracy": {"Score": <0-10>, "Explanation": "<one sentence>"}, \
"Completeness": {"Score": <0-10>, "Explanation": "<one sentence>"}, \
"Instruction Adherence": {"Score": <0-10>, "Explanation": "<one sentence>"}}
"""


def report_prompt(reference: str, generated: str) -> str:
  """The one user message that asks the judge to grade a generated report against the gold report."""
  return (f"{REPORT_RUBRIC}\n[Reference report]\n{reference}\n[End of reference report]\n\n"
          f"[AI report]\n{generated}\n[End of AI report]")


def arena_prompt(turns: Sequence[Mapping[str, str]], answers: Sequence[str]) -> str:
  """The one user message that asks the judge to grade a whole dialogue.

  Args:
    turns: the gold dialogue, [{"question", "answer"}, ...].
    answers: the model's answer to each question, in order.
  """
  reference = "\n\n".join(f"Question {i}: {turn['question']}\nReference answer {i}: {turn['answer']}"
                          for i, turn in enumerate(turns, 1))
  assistant = "\n\n".join(f"Question {i}: {turn['question']}\nAssistant answer {i}: {answer}"
                          for i, (turn, answer) in enumerate(zip(turns, answers), 1))
  return (f"{ARENA_RUBRIC}\n[Reference conversation]\n{reference}\n[End of reference conversation]\n\n"
          f"[Assistant conversation]\n{assistant}\n[End of assistant conversation]")


# ---------------------------------------------------------------------------------------------------------------
# Reading the judge's answer.

_SCORE_TEXT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*")
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _json_object(content: str) -> dict[str, Any]:
  """The JSON object in an answer: the whole text, a ```json fenced block, or the outermost {...}."""
  text = content.strip()
  candidates = [text]
  fenced = _FENCED.search(text)
  if fenced:
    candidates.append(fenced.group(1))
  start, end = text.find("{"), text.rfind("}")
  if 0 <= start < end:
    candidates.append(text[start:end + 1])
  for candidate in candidates:
    try:
      value = json.loads(candidate)
    except json.JSONDecodeError:
      continue
    if isinstance(value, dict):
      return value
  raise ValueError("the answer is not a JSON object")


def _score_value(value: Any, aspect: str) -> float:
  if isinstance(value, bool):
    raise ValueError(f"{aspect} score {value!r} is not a number")
  if isinstance(value, (int, float)):
    number = float(value)
  elif isinstance(value, str) and _SCORE_TEXT.fullmatch(value):
    number = float(_SCORE_TEXT.fullmatch(value).group(1))
  else:
    raise ValueError(f"{aspect} score {value!r} is not a number")
  if not (math.isfinite(number) and 0.0 <= number <= 10.0):
    raise ValueError(f"{aspect} score {number:g} is outside 0-10")
  return number


def parse_scores(content: str, aspects: Sequence[str]) -> dict[str, float]:
  """{aspect: 0-10} from a judge answer; ValueError saying what is wrong when an aspect has no usable score.

  Accepts {"Aspect": {"Score": 7, ...}} (the asked-for form) and {"Aspect": 7}; key case does not matter;
  numbers may be strings ("7", "7/10"). Anything else fails the sample rather than counting as 0.
  """
  answer = {str(key).strip().casefold(): value for key, value in _json_object(content).items()}
  scores = {}
  for aspect in aspects:
    if aspect.casefold() not in answer:
      raise ValueError(f"no {aspect!r} in the answer")
    value = answer[aspect.casefold()]
    if isinstance(value, Mapping):
      fields = {str(key).strip().casefold(): field for key, field in value.items()}
      if "score" not in fields:
        raise ValueError(f"{aspect!r} has no Score")
      value = fields["score"]
    scores[aspect] = _score_value(value, aspect)
  return scores


# ---------------------------------------------------------------------------------------------------------------
# The client.


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """Where and how the judge is called (build it from a config section: `JudgeConfig(**section)`).

  Attributes:
    base_url: API root that "/chat/completions" is appended to: "https://api.openai.com/v1", or an
      OpenAI-compatible server such as "http://localhost:8000/v1".
    model: the judge model. The paper used GPT-4o; a dated snapshot keeps scores reproducible.
    api_key_env: name of the environment variable holding the API key (sent as a Bearer token), so the key
      never sits in a config file; empty for servers without authentication.
    timeout_s: seconds per request.
    attempts: tries per request, the first included.
    backoff_s: wait before the first retry, doubled for each further one, capped at max_backoff_s; a longer
      Retry-After header (up to the cap) wins.
    max_backoff_s: the cap.
    workers: concurrent requests (the paper used 8).
  """
  base_url: str = "https://api.openai.com/v1"
  model: str = "gpt-4o-2024-08-06"
  api_key_env: str = "OPENAI_API_KEY"
  timeout_s: float = 120.0
  attempts: int = 6
  backoff_s: float = 2.0
  max_backoff_s: float = 60.0
  workers: int = 8


@dataclasses.dataclass(frozen=True)
class Judgement:
  """One judged sample: `scores` ({aspect: 0-10}), or None with `error` saying why; `content` is the raw answer
  (None when the endpoint refused the request)."""
  scores: dict[str, float] | None
  error: str | None
  content: str | None


def _retry_after(headers: Any) -> float | None:
  value = headers.get("Retry-After") if headers is not None else None
  try:
    return float(value) if value is not None else None
  except ValueError:
    return None  # an HTTP date: fall back to our own backoff


def _message_content(payload: bytes, url: str) -> str:
  """choices[0].message.content of a chat-completion reply; JudgeError when the reply is not one."""
  try:
    message = json.loads(payload)["choices"][0]["message"]
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise JudgeError(f"{url}: the reply is not a chat completion: {payload[:200]!r}",
                     reason="malformed reply") from e
  content = message.get("content") if isinstance(message, Mapping) else None
  return content if isinstance(content, str) else ""  # a refusal without content fails that sample only


# HTTP statuses that refuse one request for what it holds, not the client: they fail that sample alone.
SAMPLE_REFUSALS = ("HTTP 400", "HTTP 413", "HTTP 422")


def _read_cache(path: pathlib.Path) -> dict[str, str]:
  """{key: content} of a judge cache file ({} when there is none; a line cut by a kill is dropped, see
  jsonl.complete_lines); a line that is not a cache entry is skipped with a warning (its answer is asked again)."""
  cache = {}
  for number, line in jsonl.complete_lines(path):
    try:
      entry = json.loads(line)
      cache[entry["key"]] = entry["content"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      _logger.warning("%s: line %d is not a judge cache entry (%s); its answer will be asked again", path, number, e)
  return cache


class JudgeClient:
  """Calls the judge, retrying transient failures, optionally caching answers in a JSONL file.

  With `cache_path`, each answer is appended as {"key", "content"} (key = sha256 of model and prompt) as soon as
  it arrives and is reused on the next run, so an interrupted scoring run resumes without paying twice.
  """

  def __init__(self, config: JudgeConfig, *, cache_path: str | os.PathLike[str] | None = None,
               sleep: Callable[[float], None] = time.sleep):
    self.config = config
    self.url = config.base_url.rstrip("/") + "/chat/completions"
    self._headers = {"Content-Type": "application/json"}
    if config.api_key_env:
      key = os.environ.get(config.api_key_env)
      if not key:
        raise ConfigError(f"judge: environment variable {config.api_key_env} (judge api_key_env) is not set")
      self._headers["Authorization"] = f"Bearer {key}"
    self._sleep = sleep
    self._lock = threading.Lock()
    self._cache_path = pathlib.Path(cache_path) if cache_path is not None else None
    self._cache = _read_cache(self._cache_path) if self._cache_path is not None else {}

  def complete(self, prompt: str) -> str:
    """The judge's answer (message content) to one user message."""
    key = hashlib.sha256(f"{self.config.model}\0{prompt}".encode()).hexdigest()
    with self._lock:
      if key in self._cache:
        return self._cache[key]
    content = self._post(prompt)
    with self._lock:
      self._cache[key] = content
      if self._cache_path is not None:
        with self._cache_path.open("a", encoding="utf-8") as f:
          f.write(json.dumps({"key": key, "content": content}) + "\n")
    return content

  def _post(self, prompt: str) -> str:
    body = json.dumps({
        "model": self.config.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "response_format": {"type": "json_object"},
    }).encode()
    failure, wait_hint = "", None
    for attempt in range(self.config.attempts):
      if attempt:
        delay = self.config.backoff_s * 2 ** (attempt - 1)
        if wait_hint is not None:
          delay = max(delay, wait_hint)
        self._sleep(min(delay, self.config.max_backoff_s))
      request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
      try:
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
          payload = response.read()
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", errors="replace")
        if e.code != 429 and e.code < 500:
          raise JudgeError(f"{self.url}: HTTP {e.code}: {detail}", reason=f"HTTP {e.code}") from e
        failure, wait_hint = f"HTTP {e.code}: {detail}", _retry_after(e.headers)
        continue
      except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        failure, wait_hint = f"{type(e).__name__}: {getattr(e, 'reason', e)}", None
        continue
      return _message_content(payload, self.url)
    raise JudgeError(f"{self.url}: no answer after {self.config.attempts} attempts; last failure: {failure}",
                     reason="judge unavailable")

  def judge(self, prompts: Sequence[str], aspects: Sequence[str]) -> list[Judgement]:
    """One Judgement per prompt, in order; `config.workers` requests in flight. A refused request fails its
    sample only; any other JudgeError stops the judging (module docstring)."""

    def one(prompt: str) -> Judgement:
      try:
        content = self.complete(prompt)
      except JudgeError as e:
        if e.reason not in SAMPLE_REFUSALS:
          raise
        return Judgement(None, str(e), None)
      try:
        return Judgement(parse_scores(content, aspects), None, content)
      except ValueError as e:
        return Judgement(None, str(e), content)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.config.workers)
    try:
      judgements = list(tqdm(pool.map(one, prompts), total=len(prompts), desc="judge", disable=None))
    finally:
      pool.shutdown(cancel_futures=True)
    refused = [j for j in judgements if j.content is None]
    if len(judgements) > 1 and len(refused) == len(judgements):  # the requests, not the samples, are wrong
      raise JudgeError(f"every one of the {len(judgements)} requests was refused; the first: {refused[0].error}",
                       reason="every request refused")
    return judgements

  def score_reports(self, generated: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Report Score (x100) of generated reports against gold reports; see `summarize` for the keys."""
    if len(generated) != len(references):
      raise DataError(f"{len(generated)} generated reports for {len(references)} gold reports")
    prompts = [report_prompt(reference, text) for text, reference in zip(generated, references)]
    return summarize(self.judge(prompts, REPORT_ASPECTS), REPORT_ASPECTS, "report_score")

  def score_arena(self, dialogues: Sequence[Sequence[Mapping[str, str]]],
                  answers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Arena Score (x100): `dialogues` are gold [{"question", "answer"}, ...], `answers` the model's per turn."""
    if len(dialogues) != len(answers):
      raise DataError(f"{len(answers)} answered dialogues for {len(dialogues)} gold dialogues")
    for i, (turns, replies) in enumerate(zip(dialogues, answers)):
      if len(turns) != len(replies):
        raise DataError(f"arena dialogue {i}: {len(replies)} model answers for {len(turns)} questions")
    prompts = [arena_prompt(turns, replies) for turns, replies in zip(dialogues, answers)]
    return summarize(self.judge(prompts, ARENA_ASPECTS), ARENA_ASPECTS, "arena_score")


def summarize(judgements: Sequence[Judgement], aspects: Sequence[str], score_key: str) -> dict[str, Any]:
  """Set-level judge scores (x10 of the 0-10 scale, so 0-100) over the samples that were judged.

  Returns:
    {score_key: mean of every aspect score of the judged samples x 10 (NaN when none was judged),
     "aspects": {aspect: mean x 10}, "judged": count, "judge_failed": count,
     "judge_per_sample": per sample the mean of its aspects x 10, or None when it failed,
     "judge_failures": [{"index", "error"}]}.
  """
  judged = [j.scores for j in judgements if j.scores is not None]

  def mean10(values: list[float]) -> float:
    return 10 * statistics.fmean(values) if values else float("nan")

  return {
      score_key: mean10([s[a] for s in judged for a in aspects]),
      "aspects": {a: mean10([s[a] for s in judged]) for a in aspects},
      "judged": len(judged),
      "judge_failed": len(judgements) - len(judged),
      "judge_per_sample": [None if j.scores is None else mean10(list(j.scores.values())) for j in judgements],
      "judge_failures": [{"index": i, "error": j.error} for i, j in enumerate(judgements) if j.scores is None],
  }

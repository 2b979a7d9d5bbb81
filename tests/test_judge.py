"""The LLM-judge client against a fake OpenAI-compatible server on loopback."""

import http.server
import json
import math
import threading
import time

import pytest

from pulse_jax import judge, metrics
from pulse_jax.errors import ConfigError, DataError, JudgeError


def _completion(content: str) -> dict:
  return {"id": "cmpl-1", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def _scores(**aspects) -> str:
  return json.dumps({name.replace("_", " "): {"Score": score, "Explanation": "because"}
                     for name, score in aspects.items()})


class FakeServer:
  """An OpenAI-compatible /v1/chat/completions on 127.0.0.1.

  `reply(body, n)` -> (status, JSON or text, seconds to wait first) answers the n-th request; `headers` are added
  to every response.
  """

  def __init__(self):
    self.requests: list[dict] = []
    self.headers: dict[str, str] = {}
    self.reply = lambda body, n: (200, _completion("{}"), 0.0)
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload, delay = server.reply(body, len(server.requests))
        time.sleep(delay)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          for name, value in server.headers.items():
            self.send_header(name, value)
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client gave up waiting (timeout test)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    self.thread.start()
    self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  fake = FakeServer()
  yield fake
  fake.close()


@pytest.fixture
def sleeps():
  return []


def _client(server, sleeps, **overrides) -> judge.JudgeClient:
  settings = {"timeout_s": 5.0, **overrides}
  config = judge.JudgeConfig(base_url=server.base_url, model="judge-model", api_key_env="", workers=1, **settings)
  return judge.JudgeClient(config, sleep=sleeps.append)


def _prompt(body: dict) -> str:
  return body["messages"][0]["content"]


def test_report_scores_and_request_body(server, sleeps, monkeypatch):
  monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
  answers = {"GEN-1": _scores(Diagnosis=8, Form=6, Rhythm=10), "GEN-2": _scores(Diagnosis=4, Form="5", Rhythm=6)}
  server.reply = lambda body, n: (200, _completion(next(a for k, a in answers.items() if k in _prompt(body))), 0.0)
  config = judge.JudgeConfig(base_url=server.base_url + "/", model="judge-model", api_key_env="TEST_JUDGE_KEY",
                             workers=2)
  result = judge.JudgeClient(config).score_reports(["report GEN-1", "report GEN-2"], ["gold REF-1", "gold REF-2"])
  # Per sample: mean of the three x 10 -> 80 and 50; set = 65; aspects x 10.
  assert result["judge_per_sample"] == pytest.approx([80.0, 50.0])
  assert result["report_score"] == pytest.approx(65.0)
  assert result["aspects"] == pytest.approx({"Diagnosis": 60.0, "Form": 55.0, "Rhythm": 80.0})
  assert (result["judged"], result["judge_failed"]) == (2, 0)
  request = server.requests[0]
  assert request["path"] == "/v1/chat/completions"
  assert request["headers"]["Authorization"] == "Bearer sk-test"
  body = request["body"]
  assert body["model"] == "judge-model"
  assert body["temperature"] == 0
  assert body["response_format"] == {"type": "json_object"}
  assert [m["role"] for m in body["messages"]] == ["user"]
  prompts = sorted(_prompt(r["body"]) for r in server.requests)
  assert prompts[0].startswith(judge.REPORT_RUBRIC)
  assert "gold REF-1" in prompts[0] and "report GEN-1" in prompts[0]
  assert prompts[0].index("gold REF-1") < prompts[0].index("report GEN-1")


def test_server_error_then_success_is_retried_with_backoff(server, sleeps):
  server.reply = lambda body, n: ((500, {"error": "overloaded"}, 0.0) if n == 1 else
                                  (200, _completion(_scores(Diagnosis=7, Form=7, Rhythm=7)), 0.0))
  result = _client(server, sleeps).score_reports(["a"], ["b"])
  assert result["report_score"] == pytest.approx(70.0)
  assert len(server.requests) == 2
  assert sleeps == [2.0]


def test_rate_limit_honours_retry_after_and_timeouts_are_retried(server, sleeps):
  def reply(body, n):
    if n == 1:
      return 200, _completion("late"), 1.5                 # slower than the client's timeout
    if n == 2:
      return 429, {"error": "rate limited"}, 0.0
    return 200, _completion(_scores(Accuracy=9, Completeness=6, Instruction_Adherence=9)), 0.0
  server.reply = reply
  server.headers = {"Retry-After": "7"}
  client = _client(server, sleeps, timeout_s=0.5)
  assert client.complete("hello") == _scores(Accuracy=9, Completeness=6, Instruction_Adherence=9)
  assert len(server.requests) == 3
  assert sleeps == [2.0, 7.0]                                # backoff after the timeout, Retry-After after the 429


def test_last_retry_raises_a_clear_error(server, sleeps):
  server.reply = lambda body, n: (503, {"error": "down"}, 0.0)
  with pytest.raises(JudgeError, match=r"chat/completions: no answer after 3 attempts; last failure: HTTP 503"):
    _client(server, sleeps, attempts=3, backoff_s=1.0, max_backoff_s=1.5).complete("x")
  assert len(server.requests) == 3
  assert sleeps == [1.0, 1.5]


def test_client_errors_are_not_retried(server, sleeps):
  server.reply = lambda body, n: (401, {"error": "bad key"}, 0.0)
  with pytest.raises(JudgeError, match="HTTP 401"):
    _client(server, sleeps).complete("x")
  assert len(server.requests) == 1 and sleeps == []


def test_reply_that_is_not_a_chat_completion_raises(server, sleeps):
  server.reply = lambda body, n: (200, "<html>login page</html>", 0.0)
  with pytest.raises(JudgeError, match="not a chat completion"):
    _client(server, sleeps).complete("x")


def test_malformed_answers_are_failed_samples_not_zeros(server, sleeps):
  answers = {
      "S0": _scores(Diagnosis=10, Form=10, Rhythm=10),
      "S1": "Sorry, I cannot grade this report.",
      "S2": json.dumps({"Diagnosis": {"Score": 3}, "Form": {"Score": 4}}),
      "S3": _scores(Diagnosis="high", Form=5, Rhythm=5),
      "S4": _scores(Diagnosis=11, Form=5, Rhythm=5),
      "S5": "```json\n" + _scores(Diagnosis=2, Form=4, Rhythm=6) + "\n```",
  }
  server.reply = lambda body, n: (200, _completion(next(a for k, a in answers.items() if k in _prompt(body))), 0.0)
  result = _client(server, sleeps).score_reports(list(answers), ["gold"] * len(answers))
  assert (result["judged"], result["judge_failed"]) == (2, 4)
  assert result["judge_per_sample"][1:5] == [None] * 4
  assert result["report_score"] == pytest.approx((100.0 + 40.0) / 2)
  errors = {f["index"]: f["error"] for f in result["judge_failures"]}
  assert errors[1] == "the answer is not a JSON object"
  assert errors[2] == "no 'Rhythm' in the answer"
  assert errors[3] == "Diagnosis score 'high' is not a number"
  assert errors[4] == "Diagnosis score 11 is outside 0-10"


def test_parse_scores_accepts_bare_numbers_and_any_key_case():
  content = '{"accuracy": 8, "COMPLETENESS": {"score": "6/10"}, "Instruction Adherence": {"Score": 7.5}}'
  assert judge.parse_scores(content, judge.ARENA_ASPECTS) == {
      "Accuracy": 8.0, "Completeness": 6.0, "Instruction Adherence": 7.5}
  with pytest.raises(ValueError, match="not a number"):
    judge.parse_scores('{"Accuracy": true, "Completeness": 1, "Instruction Adherence": 1}', judge.ARENA_ASPECTS)


def test_arena_one_call_per_dialogue_sees_both_turns(server, sleeps):
  dialogues = [
      [{"question": "Q1a?", "answer": "G1a"}, {"question": "Q1b?", "answer": "G1b"}],
      [{"question": "Q2a?", "answer": "G2a"}, {"question": "Q2b?", "answer": "G2b"}],
  ]
  answers = [["M1a", "M1b"], ["M2a", "M2b"]]
  replies = {"M1a": _scores(Accuracy=9, Completeness=6, Instruction_Adherence=9),
             "M2a": _scores(Accuracy=3, Completeness=3, Instruction_Adherence=6)}
  server.reply = lambda body, n: (200, _completion(next(a for k, a in replies.items() if k in _prompt(body))), 0.0)
  result = metrics.score_set("arena", answers, dialogues, judge=_client(server, sleeps))
  assert len(server.requests) == 2
  first = _prompt(server.requests[0]["body"])
  for text in ("Q1a?", "Q1b?", "G1a", "G1b", "M1a", "M1b"):
    assert text in first
  assert first.startswith(judge.ARENA_RUBRIC)
  # Mean of all 3N scores x 10: (9+6+9+3+3+6)/6 * 10 = 60.
  assert result["arena_score"] == pytest.approx(60.0)
  assert result["aspects"]["Accuracy"] == pytest.approx(60.0)
  with pytest.raises(DataError, match="1 model answers for 2 questions"):
    _client(server, sleeps).score_arena(dialogues, [["M1a"], ["M2a", "M2b"]])


def test_report_set_with_judge_keeps_the_proxy(server, sleeps):
  server.reply = lambda body, n: (200, _completion(_scores(Diagnosis=5, Form=5, Rhythm=5)), 0.0)
  result = metrics.score_set("ptb-test-report", ["Sinus rhythm."], ["Sinus rhythm."], judge=_client(server, sleeps))
  assert result["report_score"] == pytest.approx(50.0)
  assert result["proxy_f1"] == pytest.approx(100.0)
  table = metrics.comparison_table([result])
  assert "| ptb-test-report | report_score | 50.0 | – | 61.3 | 50.2 | 0.0 |" in table
  assert "| ptb-test-report | Diagnosis | 50.0 | – | 47.7 | – | – |" in table


def test_cache_makes_a_rerun_free(server, sleeps, tmp_path):
  server.reply = lambda body, n: (200, _completion(_scores(Diagnosis=1, Form=2, Rhythm=3)), 0.0)
  cache = tmp_path / "judge.jsonl"
  config = judge.JudgeConfig(base_url=server.base_url, api_key_env="", workers=1)
  first = judge.JudgeClient(config, cache_path=cache).score_reports(["a", "b"], ["c", "d"])
  again = judge.JudgeClient(config, cache_path=cache).score_reports(["a", "b"], ["c", "d"])
  assert len(server.requests) == 2
  assert first["report_score"] == again["report_score"] == pytest.approx(20.0)
  assert len(cache.read_text().splitlines()) == 2


def test_a_refused_sample_fails_alone_and_a_broken_judge_leaves_the_offline_scores(server, sleeps):
  """HTTP 400 for one report (a content filter, say) fails that sample only; a judge that cannot be used at all
  (401 here) stops the judging of the set, which keeps its offline proxy score and names the error."""
  def reply(body, n):
    if "flagged" in _prompt(body):
      return 400, {"error": {"message": "content policy"}}, 0.0
    return 200, _completion(_scores(Diagnosis=6, Form=6, Rhythm=6)), 0.0
  server.reply = reply
  result = _client(server, sleeps).score_reports(["Sinus rhythm.", "flagged text"], ["Sinus rhythm.", "AFIB"])
  assert (result["judged"], result["judge_failed"], result["report_score"]) == (1, 1, pytest.approx(60.0))
  assert "HTTP 400" in result["judge_failures"][0]["error"] and result["judge_failures"][0]["index"] == 1
  server.reply = lambda body, n: (401, {"error": "bad key"}, 0.0)
  result = metrics.score_set("ptb-test-report", ["Sinus rhythm."], ["Sinus rhythm."], judge=_client(server, sleeps))
  assert result["proxy_f1"] == pytest.approx(100.0) and "report_score" not in result
  assert "HTTP 401" in result["judge_error"]
  # Refusing every sample is the requests' fault (an unsupported parameter, say): a judge error, not N failures.
  server.reply = lambda body, n: (400, {"error": {"message": "response_format is not supported"}}, 0.0)
  result = metrics.score_set("ptb-test-report", ["a", "b"], ["c", "d"], judge=_client(server, sleeps))
  assert "every one of the 2 requests was refused" in result["judge_error"] and "response_format" in result[
      "judge_error"]


def test_a_cache_cut_by_a_kill_is_mended(server, sleeps, tmp_path, caplog):
  """A half-written last line (killed while appending) is cut off, so the next answer starts a clean line; a
  line that is no entry is skipped with a warning naming the file; the other answers are reused."""
  server.reply = lambda body, n: (200, _completion(_scores(Diagnosis=1, Form=2, Rhythm=3)), 0.0)
  cache = tmp_path / "judge.jsonl"
  config = judge.JudgeConfig(base_url=server.base_url, api_key_env="", workers=1)
  judge.JudgeClient(config, cache_path=cache).score_reports(["a"], ["c"])
  with cache.open("a") as f:
    f.write('not an entry\n{"key": "abc", "cont')
  with caplog.at_level("WARNING"):
    client = judge.JudgeClient(config, cache_path=cache)
  assert f"{cache}: line 2 is not a judge cache entry" in caplog.text
  assert client.score_reports(["a", "b"], ["c", "d"])["report_score"] == pytest.approx(20.0)
  assert len(server.requests) == 2  # "a" came from the cache
  lines = cache.read_text().splitlines()
  assert len(lines) == 3 and json.loads(lines[2])["key"]


def test_no_judged_sample_gives_nan_not_zero(server, sleeps):
  server.reply = lambda body, n: (200, _completion("no json here"), 0.0)
  result = _client(server, sleeps).score_reports(["a"], ["b"])
  assert math.isnan(result["report_score"]) and result["judge_failed"] == 1


def test_missing_api_key_variable_is_a_config_error(monkeypatch):
  monkeypatch.delenv("PULSE_TEST_MISSING_KEY", raising=False)
  with pytest.raises(ConfigError, match="PULSE_TEST_MISSING_KEY"):
    judge.JudgeClient(judge.JudgeConfig(api_key_env="PULSE_TEST_MISSING_KEY"))

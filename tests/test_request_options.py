"""Per-model request options (max_tokens_param, fixed_temperature, extra_body) end to end.

The HTTP simulator's strict mode answers max_tokens and temperature != 1 the way
api.openai.com answers GPT-5-family requests (HTTP 400, OpenAI's words, param and
code); the paper pool's GPT-5 entries must get answers from it, and a spec that
still sends max_tokens must get one clear, non-retried error.
"""

import contextlib
import json
import pickle
import subprocess
import sys
import types
import urllib.error
import urllib.request

import ml_collections
import pytest

from hieramas_jax import executor
from hieramas_jax.executor import Plan
from hieramas_jax.llm.base import ConfigError
from hieramas_jax.llm.cache import CachedBackend
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy
from hieramas_jax.llm.pool import PAPER_POOL, ModelSpec, RequestBody, paper_pool, pool_from_config
from hieramas_jax.llm.preflight import EndpointError, preflight
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_http import ServerThread, SimServer
from hieramas_jax.llm.sim_task import ArithmeticTask
from tests.test_sim_server import ROOT, cli_server

TASK = ArithmeticTask()
PROBLEMS = TASK.load("test", n=10)
MESSAGES = TASK.proposer_messages(PROBLEMS[0], TASK.roles[0], [])
FAST_RETRY = RetryPolicy(max_retries=3, base_delay_s=0.001, max_delay_s=0.01)
GPT5 = ("GPT-5-nano", "GPT-5-mini")
RUN_PARAMS = {"temperature": 0.7, "max_tokens": 256}  # what the trainer sends every model (llm.temperature, ...)
MAX_TOKENS_REFUSAL = ("Unsupported parameter: 'max_tokens' is not supported with this model. "
                      "Use 'max_completion_tokens' instead.")


@contextlib.contextmanager
def strict_server(strict=GPT5):
  backend = SimulatedBackend(default_world(seed=0), TASK, PROBLEMS)
  with ServerThread(SimServer(backend, latency_s=0.0, strict_models=strict)) as thread:
    yield thread


@contextlib.contextmanager
def openai_backend(pool, **kwargs):
  backend = OpenAIBackend(pool, retry=FAST_RETRY, timeout_s=5.0, **kwargs)
  try:
    yield backend
  finally:
    backend.close()


def complete(backend, model, **params):
  return executor.run_sync(backend.complete(model, MESSAGES, **params))


# ---------------------------------------------------------------------------
# The spec: paper values, translation, validation
# ---------------------------------------------------------------------------


def test_paper_pool_gpt5_entries_follow_openais_rules_and_the_others_send_what_the_run_says():
  by_name = {m.name: m for m in PAPER_POOL}
  for name in GPT5:
    spec = by_name[name]
    assert spec.max_tokens_param == "max_completion_tokens" and spec.fixed_temperature == 1.0
    assert dict(spec.extra_body) == {}  # OpenAI's default reasoning effort, as the paper's calls had
    assert spec.wire_params(RUN_PARAMS) == {"temperature": 1.0, "max_completion_tokens": 256}
  for spec in PAPER_POOL:
    if spec.name not in GPT5:
      assert spec.request_options() == {}
      assert spec.wire_params(RUN_PARAMS) == RUN_PARAMS


def test_wire_params_moves_the_cap_and_fixes_the_temperature_only():
  spec = ModelSpec("m", max_tokens_param="max_completion_tokens", fixed_temperature=1)
  assert spec.fixed_temperature == 1.0 and isinstance(spec.fixed_temperature, float)
  assert spec.wire_params({"max_completion_tokens": 9, "seed": 3, "stop": ["x"]}) == {
      "max_completion_tokens": 9, "seed": 3, "stop": ["x"], "temperature": 1.0}
  assert spec.wire_params({}) == {"temperature": 1.0}  # no cap asked, none invented
  legacy = ModelSpec("m")
  assert legacy.wire_params({"max_completion_tokens": 9, "temperature": 0.2}) == {"max_tokens": 9, "temperature": 0.2}
  assert legacy.wire_params({"max_tokens": 9, "max_completion_tokens": 9}) == {"max_tokens": 9}
  with pytest.raises(ConfigError, match="max_tokens=9 and max_completion_tokens=10; give the cap once"):
    legacy.wire_params({"max_tokens": 9, "max_completion_tokens": 10})


def test_config_entries_parse_options_from_plain_dicts_and_config_dicts():
  nested = ml_collections.ConfigDict({"order": ["openai"], "allow_fallbacks": False})
  pool = pool_from_config([
      {"name": "GPT-5-mini", "base_url": "https://openrouter.ai/api/v1", "served_name": "openai/gpt-5-mini",
       "extra_body": {"reasoning_effort": "minimal", "provider": nested}},
      {"name": "GPT-5-nano", "max_tokens_param": "max_tokens", "fixed_temperature": None},  # the paper's request
      {"name": "o-model", "price_in_per_m": 1.1, "price_out_per_m": 4.4, "max_tokens_param": "max_completion_tokens",
       "fixed_temperature": 1},
  ], environ={})
  mini, nano, o_model = pool
  assert mini.max_tokens_param == "max_completion_tokens" and mini.fixed_temperature == 1.0  # kept from the paper
  assert mini.extra_body == {"provider": {"allow_fallbacks": False, "order": ["openai"]}, "reasoning_effort": "minimal"}
  assert nano.request_options() == {} and nano.wire_params(RUN_PARAMS) == RUN_PARAMS
  assert o_model.request_options() == {"max_tokens_param": "max_completion_tokens", "fixed_temperature": 1.0}


def test_extra_body_is_read_only_hashable_and_survives_pickling():
  spec = ModelSpec("m", extra_body={"provider": {"order": ["a", "b"]}, "reasoning_effort": "low"})
  with pytest.raises(TypeError):
    spec.extra_body["reasoning_effort"] = "high"
  with pytest.raises(AttributeError):
    spec.extra_body["provider"]["order"].append("c")  # nested lists are tuples
  sent = spec.extra_body.to_dict()
  sent["provider"]["order"].append("c")  # the copy handed to the client may change; the spec does not
  assert spec.extra_body.to_dict() == {"provider": {"order": ["a", "b"]}, "reasoning_effort": "low"}
  again = pickle.loads(pickle.dumps(spec))
  assert again == spec and hash(again) == hash(spec) and isinstance(again.extra_body, RequestBody)
  assert spec != ModelSpec("m", extra_body={"provider": {"order": ["b", "a"]}, "reasoning_effort": "low"})
  assert repr(spec.extra_body) == "{'provider': {'order': ['a', 'b']}, 'reasoning_effort': 'low'}"


@pytest.mark.parametrize("entry, message", [
    ({"max_tokens_param": "max_new_tokens"}, "max_tokens_param='max_new_tokens'; choose 'max_tokens'"),
    ({"max_tokens_param": None}, "max_tokens_param=None; choose"),
    ({"fixed_temperature": "1.0"}, r"fixed_temperature='1.0'; it must be None \(send llm.temperature\) or a number"),
    ({"fixed_temperature": True}, "fixed_temperature=True; it must be None"),
    ({"fixed_temperature": 2.5}, r"in \[0, 2\]"),
    ({"fixed_temperature": float("nan")}, "fixed_temperature=nan"),
    ({"extra_body": ["reasoning_effort", "low"]}, "extra_body=.* is a list; it must be a mapping"),
    ({"extra_body": "reasoning_effort=low"}, "is a str; it must be a mapping"),
    ({"extra_body": {"temperature": 0.2}}, "extra_body sets 'temperature', which the backend sets itself: "
                                           "temperature: set fixed_temperature"),
    ({"extra_body": {"max_tokens": 64, "model": "x"}}, "extra_body sets 'max_tokens', 'model'"),
    ({"extra_body": {"n": 4}}, "one completion per call"),
    ({"extra_body": {"seed": object()}}, r"extra_body\['seed'\]=<object .*> is a object; request fields must be JSON"),
    ({"extra_body": {"provider": {1: "x"}}}, r"extra_body\['provider'\]: key 1 is not a string"),
    ({"extra_body": {"top_p": float("inf")}}, "JSON has no NaN or infinity"),
    ({"temperature": 0.2}, r"unknown field\(s\) \['temperature'\] \('temperature': use fixed_temperature"),
    ({"max_token_param": "max_tokens"}, "'max_token_param': did you mean 'max_tokens_param'?"),
    ({"reasoning_effort": "low"}, r"use extra_body=\{'reasoning_effort': ...\}"),
])
def test_bad_options_are_refused_with_what_to_fix(entry, message):
  with pytest.raises(ConfigError, match=message):
    pool_from_config([{"name": "GPT-5-mini", **entry}], environ={})


def test_paper_pool_overrides_in_a_run_config_are_checked_the_same_way():
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top  # pulls in JAX
  from hieramas_jax.train import environment  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config("math")
  c.llm.models = [{"name": "GPT-5-mini", "extra_body": {"reasoning_effort": "minimal"}}]
  specs = {s.name: s for s in environment.pool_specs(c)}
  assert specs["GPT-5-mini"].extra_body == {"reasoning_effort": "minimal"}
  assert specs["GPT-5-mini"].max_tokens_param == "max_completion_tokens"
  c.llm.models = [{"name": "GPT-5-mini", "temperature": 1.0}]
  with pytest.raises(ConfigError, match="'temperature': use fixed_temperature"):
    environment.pool_specs(c)


# ---------------------------------------------------------------------------
# Against the strict HTTP simulator
# ---------------------------------------------------------------------------


def test_strict_server_answers_like_openai():
  with strict_server() as server:
    body = {"model": "GPT-5-mini", "messages": MESSAGES, "max_tokens": 8}

    def post(payload):
      request = urllib.request.Request(f"{server.base_url}/chat/completions", json.dumps(payload).encode(),
                                       {"Content-Type": "application/json"})
      try:
        with urllib.request.urlopen(request, timeout=5) as answer:
          return answer.status, json.load(answer)
      except urllib.error.HTTPError as e:
        return e.code, json.load(e)

    assert post(body) == (400, {"error": {"message": MAX_TOKENS_REFUSAL, "type": "invalid_request_error",
                                          "param": "max_tokens", "code": "unsupported_parameter"}})
    del body["max_tokens"]
    assert post({**body, "temperature": 0.2}) == (400, {"error": {
        "message": "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) "
                   "value is supported.", "type": "invalid_request_error", "param": "temperature",
        "code": "unsupported_value"}})
    for accepted in ({"max_completion_tokens": 8}, {"temperature": 1}, {"temperature": 1.0}, {}):
      status, answer = post({**body, **accepted})
      assert status == 200 and answer["choices"][0]["message"]["content"], accepted
    assert post({**body, "model": "GPT-4o-mini", "max_tokens": 8, "temperature": 0.2})[0] == 200  # not strict
    stats = server.server.stats
    assert stats.unsupported == 2 and stats.rejected == 2 and stats.completed == 5
    assert stats.last_params["GPT-4o-mini"] == {"model": "GPT-4o-mini", "max_tokens": 8, "temperature": 0.2}
  with pytest.raises(ValueError, match=r"strict_models names model\(s\) \['GPT-6'\] the simulator does not serve"):
    SimServer(SimulatedBackend(default_world(seed=0), TASK, PROBLEMS), strict_models=["GPT-6"])


def test_paper_pool_gets_answers_from_strict_gpt5_endpoints_in_a_whole_run():
  with strict_server() as server:
    pool = paper_pool(["GPT-5-nano", "GPT-5-mini", "GPT-4o-mini"], base_url=server.base_url)
    with openai_backend(pool, seed_from_sample_index=True) as backend:
      preflight(backend, backend.known_models(), timeout_s=10.0)  # the probe's max_tokens is translated too
      chain = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
      plans = [Plan(p, TASK.roles, [["GPT-5-nano", "GPT-4o-mini", "GPT-5-mini"]] * 3, chain, "GPT-5-mini")
               for p in PROBLEMS[:4]]
      results = executor.execute(plans, backend, TASK, params=RUN_PARAMS)
    calls = [c for r in results for c in r.calls]
    assert calls and all(c.error is None and c.attempts == 1 for c in calls)
    stats = server.server.stats
    assert stats.unsupported == 0 and stats.rejected == 0 and stats.completed == len(calls)
    for name in GPT5:
      sent = stats.last_params[name]
      assert sent["max_completion_tokens"] == 256 and sent["temperature"] == 1.0 and "max_tokens" not in sent
    assert stats.last_params["GPT-4o-mini"]["max_tokens"] == 256
    assert stats.last_params["GPT-4o-mini"]["temperature"] == 0.7


@pytest.mark.parametrize("override, params, cause", [
    ({"max_tokens_param": "max_tokens"}, RUN_PARAMS,
     "HTTP 400 unsupported parameter: " + MAX_TOKENS_REFUSAL +
     " (set max_tokens_param='max_completion_tokens' in the llm.models entry of 'GPT-5-mini')"),
    ({"fixed_temperature": None}, RUN_PARAMS,
     "HTTP 400 unsupported value: Unsupported value: 'temperature' does not support 0.7 with this model. Only the "
     "default (1) value is supported. (set fixed_temperature=1.0 in the llm.models entry of 'GPT-5-mini' (the only "
     "value OpenAI's GPT-5 family and o-series take))"),
])
def test_a_spec_the_endpoint_refuses_gets_one_clear_error_without_retries(override, params, cause):
  with strict_server() as server:
    with openai_backend(paper_pool(["GPT-5-mini"], base_url=server.base_url, **override)) as backend:
      response = complete(backend, "GPT-5-mini", **params)
      assert not response.ok and response.error == cause and response.attempts == 1
      assert server.server.stats.requests == 1  # a 400 is never sent again
      if "fixed_temperature" in override:  # the run's temperature 1 is accepted as it is
        assert complete(backend, "GPT-5-mini", max_tokens=64, temperature=1.0).ok


def test_preflight_reports_a_refused_parameter_before_the_run():
  with strict_server() as server:
    url = server.base_url
    pool = (paper_pool(["GPT-5-mini"], base_url=url, max_tokens_param="max_tokens") +
            paper_pool(["GPT-5-nano", "GPT-4o-mini"], base_url=url))
    with openai_backend(pool) as backend:
      with pytest.raises(EndpointError) as raised:
        preflight(backend, backend.known_models(), timeout_s=10.0)
    assert str(raised.value) == (
        f"model 'GPT-5-mini' at {url}: HTTP 400 unsupported parameter: {MAX_TOKENS_REFUSAL} (set "
        "max_tokens_param='max_completion_tokens' in the llm.models entry of 'GPT-5-mini')")
    assert server.server.stats.probes == 2


def test_extra_body_fields_reach_the_server_and_the_cache_key(tmp_path):
  reasoning = {"reasoning_effort": "minimal", "provider": {"order": ["openai"], "allow_fallbacks": False}}
  with strict_server() as server:
    pool = paper_pool(["GPT-5-mini"], base_url=server.base_url, extra_body=reasoning)
    with openai_backend(pool) as backend:
      assert complete(backend, "GPT-5-mini", **RUN_PARAMS).ok
      assert backend.cache_identity("GPT-5-mini")["request_options"] == {
          "max_tokens_param": "max_completion_tokens", "fixed_temperature": 1.0, "extra_body": reasoning}
    sent = server.server.stats.last_params["GPT-5-mini"]
    assert sent["reasoning_effort"] == "minimal" and sent["provider"] == reasoning["provider"]
    assert sent["max_completion_tokens"] == 256 and sent["temperature"] == 1.0

    def ask(**override):
      backend = OpenAIBackend(paper_pool(["GPT-5-mini"], base_url=server.base_url, **override), retry=FAST_RETRY)
      cached = CachedBackend(backend, tmp_path / "cache.sqlite")
      try:
        response = executor.run_sync(cached.complete("GPT-5-mini", MESSAGES, **RUN_PARAMS))
      finally:
        cached.close()  # closes the wrapped backend too
      assert response.ok, response.error
      return response.cached

    assert not ask()
    assert ask()  # the same request options: a hit
    assert not ask(extra_body={"reasoning_effort": "low"})  # what the server is asked changed: a miss
    assert ask(extra_body={"reasoning_effort": "low"})
  plain = OpenAIBackend(paper_pool(["GPT-4o-mini"], base_url="http://127.0.0.1:9/v1"))
  assert set(plain.cache_identity("GPT-4o-mini")) == {"base_url", "wire_name", "seed_from_sample_index"}


def test_a_reply_cut_before_any_text_is_an_empty_truncated_answer():
  spec = paper_pool(["GPT-5-nano"], base_url="http://127.0.0.1:9/v1")[0]
  backend = OpenAIBackend([spec])
  usage = types.SimpleNamespace(prompt_tokens=20, completion_tokens=64)  # all of it hidden reasoning

  def body(content, finish_reason):
    choice = types.SimpleNamespace(finish_reason=finish_reason, message=types.SimpleNamespace(content=content))
    return types.SimpleNamespace(choices=[choice], usage=usage)

  cut = backend._parse(spec, MESSAGES, body(None, "length"))  # pylint: disable=protected-access
  assert cut.text == "" and cut.finish_reason == "length" and cut.cost == spec.cost(cut.usage) > 0
  refused = backend._parse(spec, MESSAGES, body(None, "content_filter"))  # pylint: disable=protected-access
  assert refused.kind == "no_text" and not refused.retryable


def test_cli_strict_models_flag():
  with cli_server("--strict_models", "GPT-5-mini") as url:
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps(
        {"model": "GPT-5-mini", "messages": MESSAGES, "max_tokens": 8}).encode(), {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
      urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400 and json.load(raised.value)["error"]["code"] == "unsupported_parameter"
  failed = subprocess.run([sys.executable, "-m", "launch.sim_server", "--port", "0", "--strict_models", "GPT-6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert failed.returncode != 0 and "--strict_models: strict_models names model(s) ['GPT-6']" in failed.stderr

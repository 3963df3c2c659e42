"""The OpenAI-compatible backend end to end: real openai client vs the simulator server on 127.0.0.1."""

import asyncio
import contextlib
import dataclasses
import json

import pytest

from hieramas_jax import executor
from hieramas_jax.executor import Plan
from hieramas_jax.llm.base import ConfigError, UnknownModelError
from hieramas_jax.llm.cache import CachedBackend
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy, _retry_after_s
from hieramas_jax.llm.pool import paper_pool
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_http import FaultConfig, ServerThread, SimServer
from hieramas_jax.llm.sim_task import ArithmeticTask

TASK = ArithmeticTask()
ROLES = TASK.roles
PROBLEMS = TASK.load("test", n=40)
CHAIN = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
FAST_RETRY = RetryPolicy(max_retries=2, base_delay_s=0.001, max_delay_s=0.01)
MODELS = ["Qwen3-8B", "Llama-3.1-8B", "GPT-4o-mini", "Gemma-3-27B", "GPT-5-nano", "GPT-5-mini"]


@contextlib.contextmanager
def sim_server(**kwargs):
  backend = SimulatedBackend(default_world(seed=0), TASK, PROBLEMS)
  with ServerThread(SimServer(backend, **kwargs)) as thread:
    yield thread


@contextlib.contextmanager
def openai_backend(base_url, *, pool_overrides=None, **kwargs):
  pool = paper_pool(base_url=base_url, **(pool_overrides or {}))
  kwargs.setdefault("retry", FAST_RETRY)
  kwargs.setdefault("timeout_s", 5.0)
  backend = OpenAIBackend(pool, seed_from_sample_index=True, **kwargs)
  try:
    yield backend
  finally:
    executor.run_sync(backend.aclose())


def plans(n, models=("Qwen3-8B", "GPT-4o-mini", "Llama-3.1-8B"), decision="GPT-4o-mini", adjacency=CHAIN):
  return [Plan(p, ROLES, [list(models)] * 3, adjacency, decision) for p in PROBLEMS[:n]]


def test_server_never_sees_more_in_flight_than_the_limits():
  with sim_server(latency_s=0.02) as server, openai_backend(server.base_url, max_concurrency=6) as backend:
    results = executor.execute(plans(16), backend, TASK)
    assert all(not r.errors for r in results)
    stats = server.server.stats
    assert stats.completed == 160
    assert 4 <= stats.max_in_flight <= 6  # the global limit binds (and is used)
  # Per-endpoint limits: two servers, 2 and 3 concurrent requests allowed, global 64.
  with sim_server(latency_s=0.02) as a, sim_server(latency_s=0.02) as b:
    pool = (paper_pool(MODELS[:3], base_url=a.base_url, max_concurrency=2) +
            paper_pool(MODELS[3:], base_url=b.base_url, max_concurrency=3))
    backend = OpenAIBackend(pool, max_concurrency=64, retry=FAST_RETRY, timeout_s=5.0)
    mixed = [Plan(p, ROLES, [MODELS[:3], MODELS[3:], MODELS[1:4]], CHAIN, MODELS[i % 6])
             for i, p in enumerate(PROBLEMS[:8])]
    results = executor.execute(mixed, backend, TASK)
    executor.run_sync(backend.aclose())
    assert all(not r.errors for r in results)
    assert a.server.stats.max_in_flight == 2 and b.server.stats.max_in_flight == 3


@pytest.mark.parametrize("kind", ["429", "500", "stall", "malformed", "empty"])
def test_transient_faults_are_retried_and_succeed(kind):
  faults = FaultConfig(first_attempts=1, first_kind=kind, retry_after_s=0.1, stall_s=2.0)
  # A stall times out at 0.6 s: the retry's 10 ms reply must fit in it on a loaded machine (0.15 s did not always).
  with sim_server(latency_s=0.01, faults=faults) as server, \
      openai_backend(server.base_url, timeout_s=0.6 if kind == "stall" else 5.0) as backend:
    results = executor.execute(plans(5), backend, TASK)
    calls = [c for r in results for c in r.calls]
    assert len(calls) == 50 and all(c.error is None and c.attempts == 2 for c in calls)
    assert all(r.final_text is not None for r in results)
    assert server.server.stats.faults == {kind: 50}
    if kind == "429":  # Retry-After (0.1 s) is honoured over the 1 ms backoff
      assert min(c.end - c.start for c in calls) >= 0.1
    if kind == "stall":  # a stall ends at the 0.6 s timeout, then the retry succeeds
      assert min(c.end - c.start for c in calls) >= 0.6


def test_a_call_failing_past_its_retries_is_an_error_record_and_the_batch_completes():
  faults = FaultConfig(model_faults={"Gemma-3-27B": "500"})
  with sim_server(latency_s=0.01, faults=faults) as server, openai_backend(server.base_url) as backend:
    batch = plans(6) + plans(3, models=("Gemma-3-27B", "Qwen3-8B", "GPT-4o-mini")) + plans(2, decision="Gemma-3-27B")
    results = executor.execute(batch, backend, TASK)
    gemma = [c for r in results for c in r.calls if c.model == "Gemma-3-27B"]
    assert len(gemma) == 3 * 3 + 2
    assert all(c.error.startswith("HTTP 500 server error") and c.error.endswith("(after 3 attempts)") and
               c.attempts == 3 and c.cost == 0 for c in gemma)
    assert server.server.stats.faults["500"] == 3 * len(gemma)
    ok = [c for r in results for c in r.calls if c.model != "Gemma-3-27B"]
    assert ok and all(c.error is None for c in ok)
    assert [r.failed for r in results] == [False] * 6 + [True] * 5  # any failed call: an error record
    assert all(len(r.errors) == 3 for r in results[6:9]) and all(not r.errors for r in results[:6])


def test_malformed_body_and_empty_choices_are_retried_then_error_records():
  faults = FaultConfig(model_faults={"GPT-5-mini": "malformed", "GPT-5-nano": "empty"})
  with sim_server(faults=faults) as server, openai_backend(server.base_url) as backend:
    results = executor.execute(plans(2, models=("GPT-5-mini", "GPT-5-nano", "Qwen3-8B")), backend, TASK)
    by_model = {c.model: c for r in results for c in r.calls}
    assert by_model["GPT-5-mini"].error.startswith("malformed response body")
    assert by_model["GPT-5-nano"].error == "malformed response body: empty 'choices' (after 3 attempts)"
    assert by_model["GPT-5-mini"].attempts == by_model["GPT-5-nano"].attempts == 3
    assert by_model["Qwen3-8B"].error is None and all(r.final_text for r in results)


def test_client_errors_fail_at_once():
  with sim_server(api_key="right-key") as server:
    with openai_backend(server.base_url, environ={"SIM_KEY": "wrong-key"},
                        pool_overrides={"api_key_env": "SIM_KEY"}) as backend:
      response = executor.run_sync(backend.complete("GPT-4o-mini", TASK.proposer_messages(PROBLEMS[0], ROLES[0], [])))
      assert response.error == "HTTP 401 unauthorized (check the API key in $SIM_KEY)" and response.attempts == 1
    with openai_backend(server.base_url, environ={"SIM_KEY": "right-key"},
                        pool_overrides={"api_key_env": "SIM_KEY", "served_name": "no-such-model"}) as backend:
      response = executor.run_sync(backend.complete("GPT-4o-mini", [{"role": "user", "content": "hi"}]))
      assert response.error == "HTTP 404 model 'no-such-model' not found on this server" and response.attempts == 1
    with openai_backend(server.base_url, environ={"SIM_KEY": "right-key"},
                        pool_overrides={"api_key_env": "SIM_KEY"}) as backend:
      response = executor.run_sync(backend.complete("GPT-4o-mini", [{"role": "user", "content": "unknown q"}]))
      assert response.error.startswith("HTTP 400") and response.attempts == 1
    assert server.server.stats.requests == 3


def test_second_identical_run_makes_zero_server_calls(tmp_path):
  with sim_server(latency_s=0.01) as server, openai_backend(server.base_url) as backend:
    cached = CachedBackend(backend, tmp_path / "responses.sqlite")
    first = executor.execute(plans(8), cached, TASK)
    assert server.server.stats.completed == 80
    server.server.reset_stats()
    second = executor.execute(plans(8), CachedBackend(backend, tmp_path / "responses.sqlite"), TASK)
    assert server.server.stats.requests == 0
    assert [r.final_text for r in first] == [r.final_text for r in second]
    assert [r.cost_usd for r in first] == [r.cost_usd for r in second]  # original costs kept
    assert all(c.cached for r in second for c in r.calls) and not any(c.cached for r in first for c in r.calls)


def test_costs_of_concurrent_queries_equal_sequential_ones():
  batch = plans(12, models=("GPT-5-mini", "Llama-3.1-8B", "DeepSeek-V3.2"))
  with sim_server(latency_s=0.01) as server, openai_backend(server.base_url) as backend:
    together = executor.execute(batch, backend, TASK)
    alone = [executor.execute([plan], backend, TASK)[0] for plan in batch]
  assert [r.cost_usd for r in together] == [r.cost_usd for r in alone]
  for r in together:
    assert r.cost_usd > 0 and r.cost_usd == pytest.approx(sum(c.cost for c in r.calls), rel=1e-12)
  price = {m.name: m for m in paper_pool()}
  for c in together[0].calls:
    assert c.cost == pytest.approx((c.prompt_tokens * price[c.model].price_in_per_m +
                                    c.completion_tokens * price[c.model].price_out_per_m) / 1e6)


def test_no_key_in_trace_results_or_errors(tmp_path):
  key = "sk-sim-0123456789-very-secret"
  faults = FaultConfig(model_faults={"Gemma-3-27B": "500"})
  trace = tmp_path / "trace.jsonl"
  with sim_server(api_key=key, faults=faults) as server, \
      openai_backend(server.base_url, environ={"SIM_TEST_KEY": key},
                     pool_overrides={"api_key_env": "SIM_TEST_KEY"}) as backend:
    results = executor.execute(plans(3, models=("Gemma-3-27B", "Qwen3-8B", "GPT-4o-mini")), backend, TASK,
                               trace_path=trace)
    assert all(r.failed for r in results) and all(len(r.errors) == 3 for r in results)
    text = trace.read_text() + repr(results) + repr(backend) + json.dumps([r.errors for r in results])
    assert key not in text and len(trace.read_text().splitlines()) == 30


def test_missing_key_and_unknown_model_are_reported_before_any_call():
  with sim_server() as server:
    with pytest.raises(ConfigError, match="HIERAMAS_TEST_ABSENT_KEY"):
      OpenAIBackend(paper_pool(base_url=server.base_url, api_key_env="HIERAMAS_TEST_ABSENT_KEY"), environ={})
    with pytest.raises(ConfigError, match="no base_url"):
      OpenAIBackend(paper_pool(), environ={})
    with openai_backend(server.base_url) as backend:
      with pytest.raises(UnknownModelError, match="'GPT-7'"):
        executor.execute(plans(2) + plans(1, decision="GPT-7"), backend, TASK)
    assert server.server.stats.requests == 0


def test_roles_of_one_layer_overlap_in_the_trace(tmp_path):
  fan_in = [[0, 0, 1], [0, 0, 1], [0, 0, 0]]  # Math Solver and Inspector both feed the Planner
  trace = tmp_path / "trace.jsonl"
  with sim_server(latency_s=0.05) as server, openai_backend(server.base_url) as backend:
    executor.execute(plans(1, adjacency=fan_in)[:1], backend, TASK)  # warm up: clients, imports, connections
    executor.execute([dataclasses.replace(plans(1, adjacency=fan_in)[0], sample=1)], backend, TASK,
                     trace_path=trace)
  records = [json.loads(line) for line in trace.read_text().splitlines()]
  span = {}
  for r in records:
    if r["role"]:
      lo, hi = span.get(r["role"], (1e9, -1e9))
      span[r["role"]] = (min(lo, r["start"]), max(hi, r["end"]))
  solver, inspector, planner = span["Math Solver"], span["Inspector"], span["Planner"]
  overlap = min(solver[1], inspector[1]) - max(solver[0], inspector[0])
  assert overlap > 0.08  # both roles (2 x 50 ms each) ran side by side
  assert planner[0] >= max(solver[1], inspector[1]) - 1e-3  # the Planner waited for both
  assert solver[1] - solver[0] < 0.2  # and the two layers did not run one after the other


def test_backend_survives_new_event_loops():
  with sim_server() as server:
    backend = OpenAIBackend(paper_pool(base_url=server.base_url), retry=FAST_RETRY, seed_from_sample_index=True)
    messages = TASK.proposer_messages(PROBLEMS[0], ROLES[0], [])

    async def once(sample_index):
      response = await backend.complete("Qwen3-8B", messages, sample_index=sample_index)
      await backend.aclose()
      return response

    for _ in range(2):  # each asyncio.run is a new loop: clients are rebuilt for it
      response = asyncio.run(once(1))
      assert response.ok
    direct = SimulatedBackend(default_world(seed=0), TASK, PROBLEMS).answer("Qwen3-8B", messages, 0)
    assert response.text != direct.text  # sample 1 differs from sample 0 (seed travels as 'seed')
    assert asyncio.run(once(0)).text == direct.text


def test_retry_after_parsing():
  assert _retry_after_s({"retry-after": "2"}) == 2.0
  assert _retry_after_s({"retry-after-ms": "250"}) == 0.25
  assert _retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
  assert _retry_after_s({"retry-after": "soon"}) is None and _retry_after_s({}) is None


def test_a_busy_endpoint_does_not_hold_global_slots():
  # Endpoint A: 1 request at a time, 200 ms each; endpoint B: fast. Six requests
  # queued on A must not take the global slots (4) that B's requests need.
  with sim_server(latency_s=0.2) as a, sim_server(latency_s=0.01) as b:
    pool = (paper_pool(["Qwen3-8B"], base_url=a.base_url, max_concurrency=1) +
            paper_pool(["GPT-4o-mini"], base_url=b.base_url, max_concurrency=8))
    backend = OpenAIBackend(pool, max_concurrency=4, retry=FAST_RETRY, timeout_s=5.0)
    messages = TASK.proposer_messages(PROBLEMS[0], ROLES[0], [])

    async def run():
      loop = asyncio.get_running_loop()
      t0 = loop.time()

      async def timed(model, i):
        await backend.complete(model, messages, sample_index=i)
        return model, loop.time() - t0

      done = await asyncio.gather(*[timed("Qwen3-8B", i) for i in range(6)],
                                  *[timed("GPT-4o-mini", i) for i in range(20)])
      await backend.aclose()
      return done

    done = asyncio.run(run())
    fast = max(t for m, t in done if m == "GPT-4o-mini")
    slow = max(t for m, t in done if m == "Qwen3-8B")
    # Relative, not absolute: on a loaded machine every call is slower, but B's requests held behind A's would
    # finish with A's last one (fast ~ slow), while free global slots let them finish well before it.
    assert slow > 1.1 and fast < 0.5 * slow, (fast, slow)

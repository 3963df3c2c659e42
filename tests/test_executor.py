"""Executor semantics with scripted and simulated in-process backends."""

import asyncio
import dataclasses
import json
import sys
import time

import numpy as np
import pytest

from hieramas_jax import executor, graphs
from hieramas_jax.executor import Plan, PlanError
from hieramas_jax.llm.base import Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_task import ArithmeticTask

TASK = ArithmeticTask()
ROLES = TASK.roles  # Math Solver, Inspector, Planner
PROBLEMS = TASK.load("test", n=40)
CHAIN = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]


class ScriptedBackend:
  """Answers '<model #n>' and records every request; some models fail, some are slow."""

  def __init__(self, fail=(), delays=None):
    self.requests = []
    self.fail = set(fail)
    self.delays = delays or {}

  def known_models(self):
    return {"a", "b", "c", "slow", "bad"}

  async def complete(self, model, messages, *, sample_index=0, **params):
    n = len(self.requests)
    self.requests.append({"model": model, "messages": messages, "sample_index": sample_index, "params": params})
    await asyncio.sleep(self.delays.get(model, 0.0))
    if model in self.fail:
      return error_response(model, "HTTP 500: scripted failure")
    return Response(model=model, text=f"<{model} #{n}>", usage=Usage(7, 3), cost=0.001 * (n + 1), latency=0.0)


def _user_text(request):
  return request["messages"][-1]["content"]


def _by_text(backend, text):
  return [r for r in backend.requests if _user_text(r).count(text)]


def test_chain_prompts_carry_only_predecessor_synthesizer_outputs():
  backend = ScriptedBackend()
  plan = Plan(PROBLEMS[0], ROLES, [["a", "b", "c"], ["a", None, "c"], [None, None, "b"]], CHAIN, "a")
  (result,) = executor.execute([plan], backend, TASK, params={"temperature": 0.5})
  calls = result.calls
  assert [(c.role, c.kind, c.position, c.model) for c in calls] == [
      ("Math Solver", "proposer", 0, "a"), ("Math Solver", "proposer", 1, "b"),
      ("Math Solver", "synthesizer", 2, "c"),
      ("Inspector", "proposer", 0, "a"), ("Inspector", "synthesizer", 2, "c"),
      ("Planner", "synthesizer", 2, "b"),  # all proposers skipped: the synthesizer answers alone
      (None, "decision", -1, "a")]
  out = result.role_outputs
  assert all(o is not None for o in out) and result.final_text is not None and not result.errors
  texts = {c.role or "decision": _user_text(r) for c, r in zip(calls, backend.requests) if c.kind != "proposer"}
  solver_proposals = [r["messages"] for r in backend.requests[:2]]
  # Inspector sees the solver's synthesizer output, not its proposals; Planner sees
  # only the Inspector (its one predecessor); the decision sees every role.
  assert out[0] in texts["Inspector"] and "<a #0>" not in texts["Inspector"]
  assert out[1] in texts["Planner"] and out[0] not in texts["Planner"]
  assert all(o in texts["decision"] for o in out)
  assert "[Candidate 1]" not in texts["Planner"]
  assert solver_proposals[0] == solver_proposals[1]  # proposers of a role share the prompt
  assert {r["params"]["temperature"] for r in backend.requests} == {0.5}
  assert result.cost_usd == pytest.approx(sum(c.cost for c in calls))
  assert result.role_costs() == pytest.approx([0.001 * (1 + 2 + 3), 0.001 * (4 + 5), 0.001 * 6])
  assert result.decision_cost == pytest.approx(0.007)
  assert sum(result.role_costs()) + result.decision_cost == pytest.approx(result.cost_usd)


def test_dropped_role_makes_no_call_and_is_invisible():
  backend = ScriptedBackend()
  # The Inspector's synthesizer is skipped: the role is dropped, even though it
  # has proposers, and the Planner (its successor) does not see it.
  plan = Plan(PROBLEMS[1], ROLES, [["a", "b", "c"], ["a", "b", None], ["a", None, "b"]],
              [[0, 1, 1], [0, 0, 1], [0, 0, 0]], "c")
  (result,) = executor.execute([plan], backend, TASK)
  assert {c.role for c in result.calls} == {"Math Solver", "Planner", None}
  assert result.role_outputs[1] is None
  planner_prompt = _user_text(next(r for r, c in zip(backend.requests, result.calls) if c.role == "Planner"))
  decision_prompt = _user_text(backend.requests[-1])
  assert "[Inspector]" not in planner_prompt and "[Math Solver]" in planner_prompt
  assert "[Inspector]" not in decision_prompt and "[Planner]" in decision_prompt


def test_failed_calls_are_error_records_not_answers():
  backend = ScriptedBackend(fail={"bad"})
  plans = [
      Plan(PROBLEMS[2], ROLES, [["bad", "a", "b"], ["a", None, "bad"], [None, None, "a"]],
           [[0, 1, 1], [0, 0, 1], [0, 0, 0]], "a"),
      Plan(PROBLEMS[3], ROLES, [["a", None, "a"], [None, None, "b"], [None, None, "c"]], CHAIN, "bad"),
  ]
  first, second = executor.execute(plans, backend, TASK)
  # A failed proposer is left out; a failed synthesizer leaves its role without output.
  assert first.role_outputs[0] is not None and first.role_outputs[1] is None
  assert len(first.errors) == 2 and all("scripted failure" in e for e in first.errors)
  planner_prompt = _user_text(next(r for r, c in zip(backend.requests, first.calls) if c.role == "Planner"))
  assert "[Inspector]" not in planner_prompt
  # The decision answered, but without the failed roles' outputs: an error record, never graded.
  assert first.failed and first.final_text is not None
  # A failed decision: no final text (not gradable), the rest still recorded.
  assert second.failed and second.final_text is None and len(second.errors) == 1
  assert all(o is not None for o in second.role_outputs)
  bad_calls = [c for c in first.calls + second.calls if c.model == "bad"]
  assert all(c.error and c.cost == 0.0 for c in bad_calls)


@pytest.mark.parametrize("adjacency, message", [
    ([[0, 1], [0, 0]], r"wrong shape \(2, 2\): expected \[3, 3\] for 3 roles"),
    ([[0, 1], [0, 0, 1], [0]], "cannot be read as an array"),
    ([[0, 2, 0], [0, 0, 0], [0, 0, 0]], r"must be 0 or 1, found 2 at \[0, 1\]"),
    ([[0, 0.5, 0], [0, 0, 0], [0, 0, 0]], r"must be 0 or 1, found 0.5 at \[0, 1\]"),
    ([[0, 1, 0], [0, 0, 1], [1, 0, 0]], "cycle: 0 -> 1 -> 2 -> 0"),
    ([[0, 0, 0], [0, 0, 1], [0, 1, 0]], "cycle: 1 -> 2 -> 1"),
    ([[0, 0, 0], [0, 1, 0], [0, 0, 0]], r"self-loop at role 1 \(adj\[1, 1\] = 1\)"),
])
def test_bad_adjacency_is_rejected_before_any_call(adjacency, message):
  backend = ScriptedBackend()
  plans = [Plan(PROBLEMS[0], ROLES, [["a", "a"]] * 3, CHAIN, "a"),
           Plan(PROBLEMS[1], ROLES, [["a", "a"]] * 3, adjacency, "a")]
  with pytest.raises(PlanError, match=message) as raised:
    executor.execute(plans, backend, TASK)
  assert str(raised.value).startswith(f"query {PROBLEMS[1].uid!r}: ")  # which plan is bad
  assert not backend.requests


def test_live_roles_run_in_the_dag_modules_order_without_dropped_roles():
  # Four roles: 0 -> 3, 1 -> 2, and role 0 feeds role 1 only through dropped role 4.
  roles = (*ROLES, dataclasses.replace(ROLES[0], name="Checker"), dataclasses.replace(ROLES[1], name="Dropped"))
  adjacency = np.zeros((5, 5), np.int8)
  adjacency[0, 3] = adjacency[1, 2] = adjacency[0, 4] = adjacency[4, 1] = 1
  assignment = [["a"], ["a"], ["a"], ["a"], ["a", None]]
  checked = executor.check_plan(Plan(PROBLEMS[0], roles, assignment, adjacency, "a"))
  live = [0, 1, 2, 3]
  # The dropped role's successor starts with the sources; the order is graphs' (layers, sorted) over live roles.
  assert checked.order == (0, 1, 2, 3)
  assert list(checked.order) == [live[k] for k in graphs.topological_order(adjacency[np.ix_(live, live)])]
  assert checked.predecessors == ((), (), (1,), (0,), ())
  backend = ScriptedBackend()
  (result,) = executor.execute([Plan(PROBLEMS[0], roles, assignment, adjacency, "a")], backend, TASK)
  decision_prompt = _user_text(backend.requests[-1])
  shown = [decision_prompt.index(f"[{roles[r].name}]") for r in checked.order]
  assert shown == sorted(shown) and "[Dropped]" not in decision_prompt and not result.failed


def test_bad_assignment_and_unknown_model_are_rejected_before_any_call():
  backend = ScriptedBackend()
  with pytest.raises(PlanError, match="2 rows for 3 roles"):
    executor.execute([Plan(PROBLEMS[0], ROLES, [["a"]] * 2, CHAIN, "a")], backend, TASK)
  with pytest.raises(PlanError, match="empty assignment row"):
    executor.execute([Plan(PROBLEMS[0], ROLES, [["a"], [], ["a"]], CHAIN, "a")], backend, TASK)
  with pytest.raises(UnknownModelError, match="'gpt-99'.*'zz'"):
    executor.execute([Plan(PROBLEMS[0], ROLES, [["a", "zz"], ["a"], ["a"]], CHAIN, "gpt-99")], backend, TASK)
  assert not backend.requests


def test_array_adjacency_and_sample_indices():
  backend = ScriptedBackend()
  plans = [Plan(PROBLEMS[0], ROLES, [["a", "a", "a"]] * 3, np.array(CHAIN, dtype=np.int32), "a", sample=s)
           for s in (0, 3)]
  first, second = executor.execute(plans, backend, TASK)
  indices = lambda res: [(c.kind, c.position) for c in res.calls]  # pylint: disable=unnecessary-lambda-assignment
  assert indices(first) == indices(second)
  by_plan = {0: [], 3: []}
  for r in backend.requests:
    by_plan[r["sample_index"] // 1000].append(r["sample_index"] % 1000)
  assert sorted(by_plan[0]) == sorted(by_plan[3]) == sorted([0, 1, 2] * 3 + [999])


def test_roles_start_when_their_predecessors_finish_not_at_layer_barriers():
  # Math Solver feeds the Planner; the Inspector is a slow independent source.
  # The Planner must start while the Inspector is still running.
  backend = ScriptedBackend(delays={"a": 0.02, "slow": 0.3})
  plan = Plan(PROBLEMS[0], ROLES, [["a", "a"], ["slow", "slow"], ["a", "a"]],
              [[0, 0, 1], [0, 0, 0], [0, 0, 0]], "a")
  (result,) = executor.execute([plan], backend, TASK)
  spans = {}
  for c in result.calls:
    if c.role is not None:
      lo, hi = spans.get(c.role, (np.inf, -np.inf))
      spans[c.role] = (min(lo, c.start), max(hi, c.end))
  assert spans["Planner"][0] < spans["Inspector"][1] - 0.1
  # Sources of the same layer overlap.
  assert spans["Math Solver"][0] < spans["Inspector"][1] and spans["Inspector"][0] < spans["Math Solver"][1]
  decision = result.calls[-1]
  assert decision.kind == "decision" and decision.start >= max(hi for _, hi in spans.values()) - 1e-6


def test_hundreds_of_queries_run_concurrently():
  backend = ScriptedBackend(delays={"a": 0.05})
  problems = TASK.load("test", n=300)
  plans = [Plan(p, ROLES, [["a", "a", "a"]] * 3, CHAIN, "a") for p in problems]
  t0 = time.perf_counter()
  results = executor.execute(plans, backend, TASK)
  wall = time.perf_counter() - t0
  assert len(results) == 300 and all(not r.failed for r in results)
  assert [r.uid for r in results] == [p.uid for p in problems]
  # 7 sequential steps of 50 ms per query; sequential queries would take 105 s.
  assert wall < 5.0


def test_trace_has_one_line_per_call(tmp_path):
  world = default_world(seed=3)
  backend = SimulatedBackend(world, TASK, PROBLEMS)
  plans = [Plan(p, ROLES, [["Qwen3-8B", "GPT-4o-mini", "GPT-5-nano"]] * 3, CHAIN, "GPT-5-mini") for p in PROBLEMS]
  trace = tmp_path / "trace" / "calls.jsonl"
  results = executor.execute(plans, backend, TASK, trace_path=trace)
  lines = [json.loads(line) for line in trace.read_text().splitlines()]
  assert len(lines) == sum(len(r.calls) for r in results) == 40 * 10
  assert set(lines[0]) >= {"query_uid", "role", "kind", "model", "prompt_tokens", "completion_tokens", "cost",
                           "start", "end", "latency", "error", "cached"}
  assert sum(line["cost"] for line in lines) == pytest.approx(executor.total_cost(results))


def test_execute_refuses_a_running_loop_and_async_variant_works():
  backend = ScriptedBackend()
  plan = Plan(PROBLEMS[0], ROLES, [["a", "a"]] * 3, CHAIN, "a")

  async def inside():
    with pytest.raises(RuntimeError, match="execute_async"):
      executor.execute([plan], backend, TASK)
    return await executor.execute_async([plan], backend, TASK)

  (result,) = asyncio.run(inside())
  assert result.final_text is not None


def test_executor_imports_no_jax():
  code = ("import sys, hieramas_jax.executor, hieramas_jax.llm.sim, hieramas_jax.llm.openai_backend, "
          "hieramas_jax.llm.sim_http; print('jax' in sys.modules)")
  import subprocess  # pylint: disable=g-import-not-at-top
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


class FinishingBackend(ScriptedBackend):
  """Cuts the replies of model 'b' at max_tokens (finish_reason 'length')."""

  async def complete(self, model, messages, *, sample_index=0, **params):
    response = await super().complete(model, messages, sample_index=sample_index, **params)
    if response.ok:
      response = dataclasses.replace(response, finish_reason="length" if model == "b" else "stop")
    return response


def test_finish_reason_is_recorded_in_calls_traces_and_truncated_counts(tmp_path):
  plan = Plan(PROBLEMS[0], ROLES, [["a", "b", "c"], [None, "b", "a"], [None, None, "c"]], CHAIN, "a")
  trace = tmp_path / "trace.jsonl"
  (result,) = executor.execute([plan], FinishingBackend(), TASK, trace_path=trace)
  assert [c.finish_reason for c in result.calls] == ["length" if c.model == "b" else "stop" for c in result.calls]
  assert result.truncated == 2 and not result.failed  # cut replies are answers, counted apart
  lines = [json.loads(line) for line in trace.read_text().splitlines()]
  assert sorted(line["finish_reason"] for line in lines) == sorted(c.finish_reason for c in result.calls)


def test_check_failures_names_where_how_many_and_the_first_error():
  backend = ScriptedBackend(fail={"bad"})
  good = Plan(PROBLEMS[0], ROLES, [[None, None, "a"]] * 3, CHAIN, "a")
  role_failed = Plan(PROBLEMS[1], ROLES, [[None, None, "bad"], [None, None, "a"], [None, None, "a"]], CHAIN, "a")
  results = executor.execute([good, role_failed, good, good], backend, TASK)
  assert [r.failed for r in results] == [False, True, False, False]
  executor.check_failures(results, 0.25, "step 3")  # 1 of 4 is not more than a quarter
  with pytest.raises(executor.FailedCallsError) as raised:
    executor.check_failures(results, 0.2, "stage 1 step 3")
  message = str(raised.value)
  assert message.startswith("stage 1 step 3: 1 of 4 queries failed (first error: Math Solver synthesizer 2 (bad): "
                            "HTTP 500: scripted failure)")
  assert "raise llm.max_failed_fraction (now 0.2)" in message and "\n" not in message
  # A batch in which every query failed stops the run whatever the threshold.
  dead = executor.execute([role_failed] * 2, backend, TASK)
  with pytest.raises(executor.FailedCallsError, match="2 of 2 queries failed"):
    executor.check_failures(dead, 1.0, "x")
  executor.check_failures([], 0.0, "an empty batch")


def test_close_backend_prefers_close_then_aclose():
  events = []

  class Sync:
    def close(self):
      events.append("close")

  class Async:
    async def aclose(self):
      events.append("aclose")

  executor.close_backend(Sync())
  executor.close_backend(Async())
  executor.close_backend(object())  # nothing to close
  assert events == ["close", "aclose"]

"""Host-side execution of multi-agent plans over an LLM backend (asyncio; no JAX).

A :class:`Plan` fixes, for one query, which model fills each position of each
role (``assignment[r][p]``: proposers p < P, the synthesizer at index P; None
skips the position), the DAG of roles (``adjacency[i][j] = 1``: role i's output
goes into role j's prompt) and the decision model. ``execute`` runs many plans
concurrently:

* a role starts as soon as its predecessors are done (one asyncio task per role;
  no barrier between topological layers);
* its proposers run in parallel on the role prompt, then its synthesizer reads
  their proposals; a role whose proposers are all skipped has its synthesizer
  answer alone; a role whose synthesizer is skipped is dropped (no call at all,
  its successors do not see it);
* successors see the synthesizer outputs of their predecessors only;
* the decision node reads every role output that exists and gives the final text.

Every call goes through the backend (which bounds concurrency). A failed call is
recorded as an error: a failed proposer is left out, a failed synthesizer leaves
its role without output (like a dropped role for its successors), a failed
decision leaves ``final_text`` None. A query with any failed call is an error
record (``QueryResult.failed``): what its decision node saw is not what the plan
asked for, so callers must not grade it, neither as right nor as wrong (training
masks it, evaluation counts it in ``failed``). Prompts come from the task
(``proposer_messages`` etc.). Cost travels with each response; a query's total
is the sum over its own calls. Each call records the backend's ``finish_reason``
("length": the reply was cut at ``max_tokens``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import threading
import time
from typing import Any, Coroutine, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from hieramas_jax import graphs
from hieramas_jax.llm.base import Backend, Message, Response, check_models
from hieramas_jax.results import (DECISION, PROPOSER, SYNTHESIZER, TRUNCATED, CallRecord, QueryResult,  # noqa: F401
                                  critical_path_s)
from hieramas_jax.tasks.base import Problem, RoleSpec, Task

# Sample indices: proposer p of draw s uses s * _SAMPLE_STRIDE + p; the synthesizer
# uses P (its position), the decision node _DECISION_POSITION. Distinct positions
# with the same prompt and model thus get distinct samples and cache entries.
_SAMPLE_STRIDE = 1000
_DECISION_POSITION = _SAMPLE_STRIDE - 1


class PlanError(ValueError):
  """A plan that cannot be executed (bad shapes, a cycle, a non-0/1 adjacency)."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to run for one query.

  Attributes:
    problem: the query.
    roles: the R roles (order = adjacency order).
    assignment: [R][P+1] model names or None (skip); index P is the synthesizer.
      Rows may differ in length (P per role).
    adjacency: [R, R] 0/1, acyclic; ``adjacency[i][j] = 1``: i feeds j. Any
      array-like (nested lists, numpy, a device array).
    decision_model: the model of the decision node.
    sample: which independent draw of this query; plans that want fresh LLM
      samples of the same query (training episodes) pass different values, and a
      re-run with the same value hits the response cache.
    score: the graph classifier's logit of ``adjacency`` when HieraMAS chose it;
      NaN when the DAG was drawn at random or given.
    graph_index: index of ``adjacency`` in the candidate pool it was chosen
      from; -1 when none.
  """

  problem: Problem
  roles: Sequence[RoleSpec]
  assignment: Sequence[Sequence[str | None]]
  adjacency: Any
  decision_model: str
  sample: int = 0
  score: float = math.nan
  graph_index: int = -1


@dataclasses.dataclass(frozen=True)
class _Checked:
  roles: tuple[RoleSpec, ...]
  assignment: tuple[tuple[str | None, ...], ...]
  predecessors: tuple[tuple[int, ...], ...]  # live predecessors of each live role
  order: tuple[int, ...]  # live roles, topological
  adjacency: np.ndarray  # [R, R] 0/1, checked


def check_adjacency(adjacency: Any, n: int) -> np.ndarray:
  """The adjacency as a 0/1 int array after checking it is [n, n], 0/1 and acyclic (``graphs.validate_adjacency``)."""
  try:
    adj = np.asarray(adjacency)
  except Exception as e:  # pylint: disable=broad-except
    raise PlanError(f"adjacency cannot be read as an array: {e}") from e
  try:
    return graphs.validate_adjacency(adj, num_nodes=n)
  except graphs.InvalidGraphError as e:
    raise PlanError(str(e)) from None


def check_plan(plan: Plan) -> _Checked:
  """Validates a plan and derives its live roles, their predecessors and order."""
  n = len(plan.roles)
  if len(plan.assignment) != n:
    raise PlanError(f"query {plan.problem.uid!r}: assignment has {len(plan.assignment)} rows for {n} roles; "
                    "give one row [proposers..., synthesizer] per role")
  rows = []
  for r, row in enumerate(plan.assignment):
    row = tuple(None if m is None else str(m) for m in row)
    if not row:
      raise PlanError(f"query {plan.problem.uid!r}: role {r} has an empty assignment row; it needs at least "
                      "the synthesizer position")
    rows.append(row)
  try:
    adj = check_adjacency(plan.adjacency, n)
  except PlanError as e:
    raise PlanError(f"query {plan.problem.uid!r}: {e}") from None
  live = [j for j, row in enumerate(rows) if row[-1] is not None]
  preds: list[tuple[int, ...]] = [()] * n
  for j in live:
    preds[j] = tuple(live[int(k)] for k in np.flatnonzero(adj[live, j]))  # live predecessors, ascending
  # Dropped roles are left out of the graph: a role whose only predecessors are dropped starts first.
  order = tuple(live[k] for k in graphs.topological_order(adj[np.ix_(live, live)]))
  return _Checked(tuple(plan.roles), tuple(rows), tuple(preds), order, adj)


class _Trace:
  """Appends call records to a JSONL file as they complete."""

  def __init__(self, path: str | os.PathLike[str] | None):
    self._file = None
    if path is not None:
      parent = os.path.dirname(os.path.abspath(os.fspath(path)))
      os.makedirs(parent, exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, record: CallRecord) -> None:
    if self._file is not None:
      self._file.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


@dataclasses.dataclass
class QueryCalls:
  """The calls of one query: each timed from the batch start, recorded as its one CallRecord, failures as errors.

  The executor and every baseline make their calls through it, so a call is
  recorded (and traced) the same way whoever makes it.

  Attributes:
    index, problem: the query's position in its batch, and the query.
    backend, params: where its calls go, with which generation parameters.
    t0: ``time.perf_counter()`` at the batch's start.
    trace: the JSONL trace the records also go to, if any.
  """

  index: int
  problem: Problem
  backend: Backend
  params: Mapping[str, Any]
  t0: float
  trace: _Trace | None = None
  calls: list[CallRecord] = dataclasses.field(default_factory=list)
  errors: list[str] = dataclasses.field(default_factory=list)

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int, role: str | None,
                     role_index: int, kind: str, position: int, where: str) -> Response:
    """One call; ``where`` names it in the error line of a failure (e.g. "Inspector proposer 1")."""
    start = time.perf_counter() - self.t0
    response = await self.backend.complete(model, messages, sample_index=sample_index, **self.params)
    end = time.perf_counter() - self.t0
    record = CallRecord(
        query_uid=self.problem.uid, query_index=self.index, role=role, role_index=role_index, kind=kind,
        position=position, model=model, prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens, cost=response.cost, start=start, end=end,
        latency=response.latency, error=response.error, cached=response.cached, attempts=response.attempts,
        finish_reason=response.finish_reason)
    self.calls.append(record)
    if self.trace is not None:
      self.trace.write(record)
    if not response.ok:
      self.errors.append(f"{where} ({model}): {response.error or 'no text'}")
    return response

  def result(self, final_text: str | None, latency_s: float, **fields: Any) -> QueryResult:
    """The query's QueryResult (calls in order of start); ``fields``: its optional fields."""
    self.calls.sort(key=lambda c: (c.start, c.end))
    return QueryResult(problem=self.problem, final_text=final_text, calls=self.calls, latency_s=latency_s,
                       errors=self.errors, **fields)


async def _run_query(index: int, plan: Plan, checked: _Checked, backend: Backend, task: Task,
                     params: Mapping[str, Any], t0: float, trace: _Trace) -> QueryResult:
  problem = plan.problem
  recorder = QueryCalls(index, problem, backend, params, t0, trace)
  base = plan.sample * _SAMPLE_STRIDE

  def call(role_index: int, kind: str, position: int, model: str, messages) -> Coroutine[Any, Any, Response]:
    role = checked.roles[role_index].name if role_index >= 0 else None
    return recorder.complete(model, messages, sample_index=base + (_DECISION_POSITION if kind == DECISION else position),
                         role=role, role_index=role_index, kind=kind, position=position,
                         where="decision" if role is None else f"{role} {kind} {position}")

  tasks: dict[int, asyncio.Task[str | None]] = {}

  async def run_role(r: int) -> str | None:
    role, row = checked.roles[r], checked.assignment[r]
    outputs = [await tasks[i] for i in checked.predecessors[r]]
    seen = [(checked.roles[i].name, text) for i, text in zip(checked.predecessors[r], outputs)
            if text is not None]
    proposer_slots = [(p, m) for p, m in enumerate(row[:-1]) if m is not None]
    proposals: list[str] = []
    if proposer_slots:
      messages = task.proposer_messages(problem, role, seen)
      answers = await asyncio.gather(*(call(r, PROPOSER, p, m, messages) for p, m in proposer_slots))
      proposals = [a.text for a in answers if a.ok]
    synth_position = len(row) - 1
    messages = task.synthesizer_messages(problem, role, proposals, seen)
    answer = await call(r, SYNTHESIZER, synth_position, row[-1], messages)
    return answer.text if answer.ok else None

  for r in checked.order:
    tasks[r] = asyncio.ensure_future(run_role(r))
  role_outputs: list[str | None] = [None] * len(checked.roles)
  for r in checked.order:
    role_outputs[r] = await tasks[r]
  seen = [(checked.roles[r].name, role_outputs[r]) for r in checked.order if role_outputs[r] is not None]
  decision = await call(-1, DECISION, -1, plan.decision_model, task.decision_messages(problem, seen))
  return recorder.result(decision.text if decision.ok else None,
                         critical_path_s(recorder.calls, checked.adjacency), role_outputs=role_outputs, plan=plan)


async def execute_async(plans: Sequence[Plan], backend: Backend, task: Task, *,
                        params: Mapping[str, Any] | None = None,
                        trace_path: str | os.PathLike[str] | None = None) -> list[QueryResult]:
  """Runs all plans concurrently; results in the order of ``plans``.

  Every plan is validated and every model checked against the backend before
  the first call (PlanError / UnknownModelError name the problem).
  """
  checked = [check_plan(p) for p in plans]
  check_models(backend, {m for c in checked for row in c.assignment for m in row} |
               {p.decision_model for p in plans})
  params = dict(params or {})
  trace = _Trace(trace_path)
  t0 = time.perf_counter()
  try:
    return list(await asyncio.gather(*(
        _run_query(i, plan, c, backend, task, params, t0, trace) for i, (plan, c) in enumerate(zip(plans, checked)))))
  finally:
    trace.close()


_RUNNERS = threading.local()
T = TypeVar("T")


def execute(plans: Sequence[Plan], backend: Backend, task: Task, *, params: Mapping[str, Any] | None = None,
            trace_path: str | os.PathLike[str] | None = None) -> list[QueryResult]:
  """Synchronous ``execute_async``.

  Runs on one event loop kept per thread, so HTTP connections of the backend are
  reused across batches. Call ``execute_async`` instead from inside a running loop.
  """
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    pass
  else:
    raise RuntimeError("execute() was called from a running event loop; await execute_async(...) instead")
  return run_sync(execute_async(plans, backend, task, params=params, trace_path=trace_path))


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
  """Runs a coroutine on this thread's persistent event loop (the one ``execute`` uses).

  Use it for anything that must share that loop with the backend, e.g.
  ``run_sync(backend.aclose())``.
  """
  runner = getattr(_RUNNERS, "runner", None)
  if runner is None:
    runner = _RUNNERS.runner = asyncio.Runner()
  return runner.run(coroutine)


def close_backend(backend: Any) -> None:
  """Closes a backend's HTTP sessions and response cache (``close()``, else ``aclose()`` on this thread's loop)."""
  close = getattr(backend, "close", None)
  if callable(close):
    close()
    return
  aclose = getattr(backend, "aclose", None)
  if callable(aclose):
    run_sync(aclose())


def first_error(results: Iterable[Any]) -> str:
  """The first error line of the first failed query (of QueryResults)."""
  for r in results:
    if r.errors:
      return r.errors[0]
  return "no final answer"


class FailedCallsError(RuntimeError):
  """Too many queries of one batch had a failed LLM call; nothing was learned or saved from that batch."""


def check_failures(results: Sequence[Any], max_failed_fraction: float, where: str) -> None:
  """Raises FailedCallsError when more than ``max_failed_fraction`` of the queries (or all of them) failed.

  Args:
    results: one batch's QueryResults (of the executor, a baseline or HieraMAS.run).
    max_failed_fraction: the tolerated fraction of failed queries (``llm.max_failed_fraction``).
    where: what the batch was, for the message (e.g. "stage 1 step 12").
  """
  total = len(results)
  failed = sum(r.failed for r in results)
  if total == 0 or failed == 0:
    return
  if failed == total or failed / total > max_failed_fraction:
    first = " ".join(first_error(r for r in results if r.failed).split())  # one line
    raise FailedCallsError(
        f"{where}: {failed} of {total} queries failed (first error: {first}); check the endpoints or raise "
        f"llm.max_failed_fraction (now {max_failed_fraction:g})")


def total_cost(results: Iterable[QueryResult]) -> float:
  """USD over many query results."""
  return math.fsum(r.cost_usd for r in results)

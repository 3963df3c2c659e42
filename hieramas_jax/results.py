"""The one result type of an executed query, its call records and its latency (host side: no JAX).

Every way of answering a query returns a :class:`QueryResult`: the executor
(``executor.execute``), the baselines (``baselines.run``), ``HieraMAS.run`` and
training's rollouts. The evaluation and the report read it. What one producer
knows and another does not lives in optional fields (``plan`` and
``role_outputs`` for executed plans, ``details`` for a method's own facts,
``answer`` and ``correct`` once graded). A query with any failed call is an error
record (``failed``): never graded, neither right nor wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from hieramas_jax import graphs
from hieramas_jax.tasks.base import Problem, Task

if TYPE_CHECKING:
  from hieramas_jax.executor import Plan

PROPOSER, SYNTHESIZER, DECISION = "proposer", "synthesizer", "decision"
TRUNCATED = "length"  # the finish_reason of a reply cut at max_tokens (OpenAI wire format)


@dataclasses.dataclass(frozen=True)
class CallRecord:
  """One LLM call of a query (also one line of the JSONL trace); built by ``executor.QueryCalls`` only."""

  query_uid: str
  query_index: int  # position of the query in the batch
  role: str | None  # the role or node name; None for the decision node
  role_index: int  # -1 for the decision node
  kind: str  # "proposer" | "synthesizer" | "decision", or a baseline's own ("debate", "leader", ...)
  position: int  # proposer index, P for the synthesizer, -1 for the decision node; a baseline's round
  model: str
  prompt_tokens: int
  completion_tokens: int
  cost: float
  start: float  # seconds since the batch started (queueing in the backend included)
  end: float
  latency: float  # the backend's latency of the answering request
  error: str | None
  cached: bool
  attempts: int
  finish_reason: str | None = None  # the backend's ("stop", "length": cut at max_tokens, ...); None if unknown

  @property
  def truncated(self) -> bool:
    return self.finish_reason == TRUNCATED

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class QueryResult:
  """One query answered by one method.

  Attributes:
    problem: the query.
    final_text: the final answer text (the decision node's, a majority's...);
      None when the method could give none (its last call failed).
    calls: every LLM call made for this query, in order of start.
    latency_s: the critical path in seconds: the longest chain of call
      latencies the method's schedule imposes (for plans: along the DAG, a role
      taking its slowest proposer plus its synthesizer, then the decision call;
      ``critical_path_s``), i.e. the query's latency with unbounded concurrency
      and no queueing. ``wall_s`` includes the queueing.
    errors: one line per failed call; any makes the query ``failed``.
    role_outputs: for executed plans, per role the synthesizer's text (None when
      the role was dropped or its synthesizer failed); empty for other methods.
    plan: the executor plan that ran (None for methods that call models directly).
    details: method-specific facts (e.g. the votes of a majority).
    answer: the answer the task extracts from ``final_text`` (set by ``grade``).
    correct: the task's grade against the problem's reference answer (set by
      ``grade``); None when not graded (failed, no reference answer, not asked).
  """

  problem: Problem
  final_text: str | None
  calls: list[CallRecord]
  latency_s: float
  errors: list[str] = dataclasses.field(default_factory=list)
  role_outputs: list[str | None] = dataclasses.field(default_factory=list)
  plan: Plan | None = None
  details: dict[str, Any] = dataclasses.field(default_factory=dict)
  answer: str | None = None
  correct: bool | None = None

  @property
  def uid(self) -> str:
    return self.problem.uid

  @property
  def failed(self) -> bool:
    """Any call failed, or no final answer: an error record, not gradable.

    A failed call changes what later calls read (a failed proposer what the
    synthesizer merges, a failed sample a majority), so the final text is not
    the method's answer: grading it would mix fault noise into accuracy.
    """
    return bool(self.errors) or self.final_text is None

  @property
  def truncated(self) -> int:
    """Replies of this query cut at ``max_tokens`` (finish_reason 'length')."""
    return sum(c.truncated for c in self.calls)

  @property
  def cost_usd(self) -> float:
    """USD of all the query's calls (exact: independent of call order)."""
    return math.fsum(c.cost for c in self.calls)

  @property
  def prompt_tokens(self) -> int:
    return sum(c.prompt_tokens for c in self.calls)

  @property
  def completion_tokens(self) -> int:
    return sum(c.completion_tokens for c in self.calls)

  @property
  def num_calls(self) -> int:
    return len(self.calls)

  @property
  def wall_s(self) -> float:
    """Last call end - first call start in its batch (queueing included); 0 without calls."""
    return max(c.end for c in self.calls) - min(c.start for c in self.calls) if self.calls else 0.0

  @property
  def decision_cost(self) -> float:
    return math.fsum(c.cost for c in self.calls if c.kind == DECISION)

  def role_costs(self) -> list[float]:
    """USD spent per role of an executed plan (proposers and synthesizer; 0.0 for dropped roles)."""
    costs = [[] for _ in self.role_outputs]
    for c in self.calls:
      if c.role_index >= 0:
        costs[c.role_index].append(c.cost)
    return [math.fsum(c) for c in costs]


def critical_path_s(calls: Sequence[CallRecord], adjacency: Any) -> float:
  """The longest chain of call latencies through a plan's DAG, plus its decision call.

  A role's proposers run together and its synthesizer after them: the role
  takes max(proposer latencies) + synthesizer latency. A role without calls was
  dropped: the executor cuts it out of the DAG, so it passes no wait on.
  """
  adj = np.asarray(adjacency)
  num_roles = adj.shape[0]
  proposers, synthesizer, decision = np.zeros(num_roles), np.zeros(num_roles), 0.0
  ran = np.zeros(num_roles, bool)
  for c in calls:
    if c.role_index < 0:
      decision = max(decision, c.latency)
      continue
    ran[c.role_index] = True
    if c.kind == SYNTHESIZER:
      synthesizer[c.role_index] = max(synthesizer[c.role_index], c.latency)
    else:
      proposers[c.role_index] = max(proposers[c.role_index], c.latency)
  finish = np.zeros(num_roles)
  for role in graphs.topological_order(adj):
    if ran[role]:
      ready = max((finish[p] for p in np.flatnonzero(adj[:, role])), default=0.0)
      finish[role] = ready + proposers[role] + synthesizer[role]
  return float(finish.max(initial=0.0) + decision)


def grade(task: Task, results: Sequence[QueryResult]) -> list[bool | None]:
  """Sets ``answer`` and ``correct`` of each result; returns the verdicts.

  Only results that did not fail and whose problem has a reference answer are
  graded (one ``task.grade_many`` call); the others keep ``correct`` None.
  """
  for r in results:
    r.answer = task.extract(r.final_text) if r.final_text is not None else None
    r.correct = None
  todo = [r for r in results if not r.failed and r.problem.answer]
  for r, ok in zip(todo, task.grade_many([r.problem for r in todo], [r.final_text for r in todo])):
    r.correct = bool(ok)
  return [r.correct for r in results]


def problem_from_text(text: str) -> Problem:
  """A Problem for a plain query text (no reference answer); its uid is a digest of the text."""
  return Problem(uid="q-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], question=text, answer="")

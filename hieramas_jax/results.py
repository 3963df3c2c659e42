"""What HieraMAS decides and runs for one query: ``PlannedQuery`` and ``RunResult`` (no JAX)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from hieramas_jax import executor, graphs
from hieramas_jax.tasks.base import Problem


@dataclasses.dataclass(frozen=True)
class PlannedQuery:
  """What HieraMAS decided for one query.

  Attributes:
    problem: the query.
    assignment: [R][P+1] model names (None = skip); index P is the synthesizer.
    adjacency: [N, N] int8 chosen DAG (``adj[i, j] = 1``: role i feeds role j).
    score: the classifier's logit of that DAG; NaN when it was drawn at random.
    plan: the executor plan (assignment, DAG, decision model, roles).
    graph_index: index of the chosen DAG in the candidate pool.
  """

  problem: Problem
  assignment: list[list[str | None]]
  adjacency: np.ndarray
  score: float
  plan: executor.Plan
  graph_index: int = -1


@dataclasses.dataclass
class RunResult:
  """One executed query.

  Attributes:
    problem: the query.
    answer_text: the decision node's text (None when that call failed).
    answer: the answer the task extracts from it (None when there is none).
    cost_usd: USD of all the query's calls.
    prompt_tokens / completion_tokens: summed over the calls.
    calls: how many LLM calls were made (``result.calls`` holds them).
    latency_s: the critical path: the longest chain of call latencies along
      the DAG (a role takes its slowest proposer plus its synthesizer; the
      decision call comes last), i.e. the query's latency with unbounded
      concurrency and no queueing (``critical_path_s``).
    wall_s: last call end - first call start in this batch (queueing included).
    plan: what was executed.
    result: the executor's full record (role outputs, calls, errors).
    correct: the task's grade of ``answer_text`` against the problem's reference
      answer; None when not graded (no reference answer, ``failed``, grade=False).
  """

  problem: Problem
  answer_text: str | None
  answer: str | None
  cost_usd: float
  prompt_tokens: int
  completion_tokens: int
  calls: int
  latency_s: float
  plan: PlannedQuery
  result: executor.QueryResult
  correct: bool | None = None
  wall_s: float = 0.0

  @property
  def failed(self) -> bool:
    """A call of this query failed: an error record (``result.errors`` says which), never graded.

    ``answer_text`` may still hold the decision node's text, but it answered
    without the failed roles' outputs: not the plan's answer.
    """
    return self.result.failed

  @property
  def errors(self) -> list[str]:
    return self.result.errors


def critical_path_s(calls: Sequence[executor.CallRecord], adjacency: np.ndarray) -> float:
  """The longest chain of call latencies through a query's DAG, plus its decision call.

  A role's proposers run together and its synthesizer after them: the role
  takes max(proposer latencies) + synthesizer latency (0 when it made no call).
  """
  adj = np.asarray(adjacency)
  num_roles = adj.shape[0]
  proposers, synthesizer, decision = np.zeros(num_roles), np.zeros(num_roles), 0.0
  for c in calls:
    if c.role_index < 0:
      decision = max(decision, c.latency)
    elif c.kind == executor.SYNTHESIZER:
      synthesizer[c.role_index] = max(synthesizer[c.role_index], c.latency)
    else:
      proposers[c.role_index] = max(proposers[c.role_index], c.latency)
  finish = np.zeros(num_roles)
  for role in graphs.topological_order(adj):
    ready = max((finish[p] for p in np.flatnonzero(adj[:, role])), default=0.0)
    finish[role] = ready + proposers[role] + synthesizer[role]
  return float(finish.max(initial=0.0) + decision)


def run_result(planned: PlannedQuery, result: executor.QueryResult, answer: str | None,
               correct: bool | None) -> RunResult:
  calls = result.calls
  return RunResult(
      problem=planned.problem, answer_text=result.final_text, answer=answer, cost_usd=result.total_cost,
      prompt_tokens=sum(c.prompt_tokens for c in calls), completion_tokens=sum(c.completion_tokens for c in calls),
      calls=len(calls), latency_s=critical_path_s(calls, planned.plan.adjacency), plan=planned, result=result,
      correct=correct, wall_s=max(c.end for c in calls) - min(c.start for c in calls) if calls else 0.0)


def problem_from_text(text: str) -> Problem:
  """A Problem for a plain query text (no reference answer); its uid is a digest of the text."""
  return Problem(uid="q-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], question=text, answer="")

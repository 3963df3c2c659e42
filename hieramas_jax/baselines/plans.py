"""Executor plans as baseline runs: the paper's single-call role plans, executed plans as outcomes, their latency."""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from hieramas_jax import executor
from hieramas_jax.baselines.core import MethodContext, QueryOutcome
from hieramas_jax.executor import Plan, QueryResult
from hieramas_jax.tasks.base import Problem


def plan_critical_path(plan: Plan, result: QueryResult) -> float:
  """Critical path of an executed plan from its calls' own latencies.

  A role starts when its live predecessors are done; its proposers run in
  parallel, then its synthesizer; the decision node starts when every role is
  done (the executor's schedule, without queueing).
  """
  checked = executor.check_plan(plan)
  proposer: dict[int, float] = collections.defaultdict(float)
  synthesizer: dict[int, float] = collections.defaultdict(float)
  decision = 0.0
  for c in result.calls:
    if c.kind == executor.PROPOSER:
      proposer[c.role_index] = max(proposer[c.role_index], c.latency)
    elif c.kind == executor.SYNTHESIZER:
      synthesizer[c.role_index] += c.latency
    else:
      decision += c.latency
  done: dict[int, float] = {}
  for r in checked.order:
    ready = max((done[i] for i in checked.predecessors[r]), default=0.0)
    done[r] = ready + proposer[r] + synthesizer[r]
  return max(done.values(), default=0.0) + decision


def single_call_role_plans(problems: Sequence[Problem], roles: Sequence[Any], model: str, adjacency: Any, *,
                           num_proposers: int = 0, sample: int = 0) -> list[Plan]:
  """Plans of the paper's Full-Graph / Random-Graph baselines (its code's ``aggregator_only`` and ``fixed_llm``).

  Every role is one call of ``model`` (its synthesizer; the ``num_proposers``
  proposer slots are left empty, so the assignment keeps the [R][P+1] shape),
  and ``model`` is the decision node too. ``adjacency`` is one [R, R] DAG for
  every query or [B, R, R], one per query.
  """
  adjs = np.asarray(adjacency)
  if adjs.ndim == 2:
    adjs = np.broadcast_to(adjs, (len(problems),) + adjs.shape)
  if adjs.ndim != 3 or len(adjs) != len(problems):
    raise ValueError(f"adjacency has shape {np.asarray(adjacency).shape}; give one [R, R] DAG or one per query "
                     f"[{len(problems)}, R, R]")
  row = [None] * int(num_proposers) + [model]
  return [Plan(problem=p, roles=roles, assignment=[list(row) for _ in roles], adjacency=np.array(adj),
               decision_model=model, sample=sample) for p, adj in zip(problems, adjs)]


def outcomes_from_results(plans: Sequence[Plan], results: Sequence[QueryResult]) -> list[QueryOutcome]:
  """Executor results as QueryOutcomes (one per plan, same order)."""
  if len(plans) != len(results):
    raise ValueError(f"{len(plans)} plans but {len(results)} results; pass the plans that produced the results")
  return [QueryOutcome(uid=res.uid, final_text=res.final_text, calls=list(res.calls),
                       latency_s=plan_critical_path(plan, res), errors=list(res.errors),
                       details={"role_outputs_present": [t is not None for t in res.role_outputs]})
          for plan, res in zip(plans, results)]


def execute_plans(ctx: MethodContext, plans: Sequence[Plan]) -> list[QueryOutcome]:
  """Runs plans with the executor on the context's backend, task and generation parameters."""
  return outcomes_from_results(plans, executor.execute(plans, ctx.backend, ctx.task, params=ctx.params))

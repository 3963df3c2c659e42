"""Executor plans as baseline runs: the paper's single-call role plans, and running plans on a method's context."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hieramas_jax.baselines.core import MethodContext
from hieramas_jax.executor import Plan
from hieramas_jax.results import QueryResult
from hieramas_jax.tasks.base import Problem


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


def execute_plans(ctx: MethodContext, plans: Sequence[Plan]) -> list[QueryResult]:
  """Runs plans with the executor on the context's backend, task and generation parameters (``ctx.run_plans``)."""
  return ctx.run_plans(plans)

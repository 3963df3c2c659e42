"""The oracle's search for the best plan (assignment and DAG) of a query type.

Coordinate ascent on exact evaluations (``oracle.Oracle.evaluate``): a plan is a DAG
(one coordinate over the distinct candidate DAGs) and one option per position
(a model or skip, per role: proposers then the synthesizer). A sweep tries every
option at every coordinate and keeps improvements until none is left.

Two things keep the ascent from stalling where the paper's reward is flat:

* Ties on the objective go to the cheaper plan. Above ln(2)/c_s USD every solved
  run earns the reward's floor (0.5), so among expensive plans the reward does not
  move when a call is removed; cost does, and descending it leads off the floor.
* Structured starts besides random ones: the strongest model everywhere, every
  role skipped (the decision model alone), and each role answered by one call of
  the strongest or the cheapest model. Removing one call from an expensive plan
  lowers the solve rate while it stays on the floor, so a search that starts only
  there rarely reaches the cheap plans that win.

It is still a local search (not guaranteed optimal); every step is exact.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

import numpy as np

Assignment = list[list[str | None]]


@dataclasses.dataclass(frozen=True)
class PlanSearchResult:
  """The best plan found: ``dag_index`` into the DAGs searched, its assignment and ``OracleResult``."""
  dag_index: int
  assignment: Assignment
  result: Any
  evaluations: int  # distinct plans evaluated


def distinct_dags(dags: Sequence[Any]) -> tuple[list[np.ndarray], list[int]]:
  """The distinct DAGs of ``dags`` (as 0/1 int8) and, for each, the index of its first occurrence."""
  seen: dict[bytes, int] = {}
  unique: list[np.ndarray] = []
  first: list[int] = []
  for i, d in enumerate(dags):
    a = (np.asarray(d) != 0).astype(np.int8)
    key = a.tobytes() + bytes(a.shape)
    if key not in seen:
      seen[key] = len(unique)
      unique.append(a)
      first.append(i)
  return unique, first


@dataclasses.dataclass(frozen=True)
class PlanRules:
  """Which plans are allowed (the paper's inference rules; default: any plan).

  Attributes:
    max_skipped_roles: the most roles whose synthesizer is skipped (-1: no cap).
    answer_roles: per role, whether it gives an answer; with a cap, not all of them may be skipped.
    proposers_may_skip: False when every proposer of a running role runs (proposer rotation).
  """
  max_skipped_roles: int = -1
  answer_roles: tuple[bool, ...] | None = None
  proposers_may_skip: bool = True

  def allows(self, plan: Assignment) -> bool:
    skipped = [row[-1] is None for row in plan]
    if self.max_skipped_roles >= 0:
      if sum(skipped) > self.max_skipped_roles:
        return False
      answers = [j for j, a in enumerate(self.answer_roles or ()) if a]
      if answers and all(skipped[j] for j in answers):
        return False
    if not self.proposers_may_skip and any(m is None for row, s in zip(plan, skipped) if not s for m in row[:-1]):
      return False
    return True


def _starts(oracle, subject: str, level: int, models: Sequence[str], num_roles: int, proposers: int,
            restarts: int, rng: random.Random, rules: PlanRules) -> list[Assignment]:
  world = oracle.world
  strongest = max(models, key=lambda m: world.skill.logit(m, subject, level))
  cheapest = min(models, key=lambda m: world.models[m].cost(1000, 1000))
  lone = None if rules.proposers_may_skip else cheapest  # the cheapest proposers where proposers must run
  options: list[str | None] = [None, *models] if rules.proposers_may_skip else list(models)
  starts: list[Assignment] = [
      [[strongest] * (proposers + 1) for _ in range(num_roles)],
      [[None] * (proposers + 1) for _ in range(num_roles)],
      [[lone] * proposers + [strongest] for _ in range(num_roles)],
      [[lone] * proposers + [cheapest] for _ in range(num_roles)],
  ]
  starts = [s for s in starts if rules.allows(s)]
  for _ in range(max(0, restarts - len(starts))):
    starts.append([[rng.choice(options) for _ in range(proposers)] + [rng.choice(models)]
                   for _ in range(num_roles)])
  return starts[:max(1, restarts)]


def best_plan(oracle, subject: str, level: int, dags: Sequence[Any], decision_model: str, *,
              proposers: int = 2, models: Sequence[str] | None = None, restarts: int = 6, max_sweeps: int = 20,
              seed: int = 0, objective: str = "expected_reward", rules: PlanRules = PlanRules(),
              **evaluate_kwargs: Any) -> PlanSearchResult:
  """Joint coordinate ascent over (DAG, assignment) for one query type; see the module docstring.

  Args:
    oracle: an ``oracle.Oracle``.
    dags: candidate DAGs [R, R] (duplicates are searched once; the index returned is the first occurrence).
    proposers: proposer positions per role (each may be skipped).
    models: the options of each position besides skip (default: the world's models).
    restarts: number of starts; the first four are the structured ones of the module docstring, the rest random.
    objective: the ``OracleResult`` field maximised (ties go to the lower expected cost).
    rules: which plans are allowed (the search moves between allowed plans only).
  """
  if not dags:
    raise ValueError("best_plan needs at least one DAG")
  models = list(oracle.world.models) if models is None else list(models)
  if not models:
    raise ValueError("best_plan needs at least one model")
  unique, first = distinct_dags(dags)
  n = len(oracle.roles)
  options: list[str | None] = [None, *models]
  memo: dict[tuple[int, tuple[tuple[str | None, ...], ...]], tuple[tuple[float, float], Any]] = {}

  def score(dag: int, plan: Assignment) -> tuple[tuple[float, float], Any]:
    key = (dag, tuple(tuple(row) for row in plan))
    found = memo.get(key)
    if found is None:
      res = oracle.evaluate(subject, level, plan, unique[dag], decision_model, **evaluate_kwargs)
      found = memo[key] = ((float(getattr(res, objective)), -float(res.expected_cost)), res)
    return found

  def better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] > b[0] + 1e-12 or (abs(a[0] - b[0]) <= 1e-12 and a[1] > b[1] + 1e-15)

  rng = random.Random(seed)
  best: tuple[tuple[float, float], int, Assignment, Any] | None = None
  for start in _starts(oracle, subject, level, models, n, proposers, restarts, rng, rules):
    plan = [list(row) for row in start]
    # The start's best DAG first: a DAG matters only through the roles that run.
    dag = max(range(len(unique)), key=lambda d: score(d, plan)[0])
    value, result = score(dag, plan)
    for _ in range(max_sweeps):
      improved = False
      for r in range(n):
        for pos in range(proposers + 1):
          for option in options:
            if option == plan[r][pos]:
              continue
            trial = [list(row) for row in plan]
            trial[r][pos] = option
            if not rules.allows(trial):
              continue
            v, res = score(dag, trial)
            if better(v, value):
              plan, value, result, improved = trial, v, res, True
      for d in range(len(unique)):
        if d != dag:
          v, res = score(d, plan)
          if better(v, value):
            dag, value, result, improved = d, v, res, True
      if not improved:
        break
    if best is None or better(value, best[0]):
      best = (value, dag, plan, result)
  assert best is not None
  return PlanSearchResult(dag_index=first[best[1]], assignment=best[2], result=best[3], evaluations=len(memo))

"""Fixed and random topologies of the roles: the paper's Full-Graph / Random-Graph, and HieraMAS's ablations.

``full_graph`` and ``random_graph`` need no training: one model fills every role
as one call and is the decision node. The other methods take a trained
HieraMAS's models or DAG choices (``MethodContext.trained``, a
:class:`TrainedSystem`) and change one of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from hieramas_jax import distributed, executor, graphs
from hieramas_jax.baselines.core import MethodContext, QueryResult
from hieramas_jax.baselines.options import model_option, option
from hieramas_jax.baselines.plans import execute_plans, single_call_role_plans
from hieramas_jax.tasks.base import Problem

# Streams of the seeded random DAGs (apart from each other and from training's).
SELECTOR_RANDOM_DAGS_STREAM, ONE_POOL_DAG_STREAM, PAPER_RANDOM_DAG_STREAM = 101, 202, 303


class TrainedSystem:
  """A loaded HieraMAS seen by the methods: its choices for the evaluated problems, each computed once."""

  def __init__(self, system: Any, problems: Sequence[Problem]):
    self.system = system
    self.problems = list(problems)
    self._cache: dict[str, Any] = {}

  def _once(self, key: str, compute: Callable[[], Any]) -> Any:
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  def selector_assignments(self) -> Any:
    """The selector's argmax under the inference rules, one [R][P+1] assignment per problem."""
    return self._once("assign", lambda: self.system.assignments(self.problems))

  def fixed_assignments(self, model: str) -> Any:
    """``model`` at every position of every problem."""
    return self.system.assignments(self.problems, fixed_model=model)

  def candidate_pool(self) -> np.ndarray:
    """The [K, R, R] candidate DAGs the classifier scores."""
    return self._once("pool", lambda: np.asarray(self.system.candidate_pool()))

  def classifier_graphs(self) -> np.ndarray:
    """The classifier's best candidate per problem (seeded random ones without a classifier)."""
    return self._once("graphs", lambda: np.asarray(self.system.choose_graphs(self.problems,
                                                                             self.candidate_pool())[0]))

  def plans(self, assignments: Sequence[Any], adjacencies: Sequence[Any]) -> list[executor.Plan]:
    """One plan per problem on the system's roles and decision model."""
    return [executor.Plan(problem=p, roles=self.system.roles, assignment=a, adjacency=np.asarray(adj),
                          decision_model=self.system.decision_model, sample=0)
            for p, a, adj in zip(self.problems, assignments, adjacencies)]

  def run(self) -> list[QueryResult]:
    """HieraMAS itself (``HieraMAS.run``) on the problems.

    Every process plans every problem (planning is deterministic, so the plans
    agree) and, in a multi-host run, runs only its share of them.
    """
    plans = self.system.plan(self.problems)
    # The evaluation grades every method alike: run ungraded.
    return distributed.run_shares(plans, lambda share: self.system.run(share, grade=False) if share else [],
                                  "baselines.hieramas")


def paper_random_dag(seed: int, num_roles: int, density: tuple[float, float]) -> np.ndarray:
  """The Random-Graph baseline's DAG: one seeded random DAG for the whole split, as the paper's code draws it."""
  return graphs.random_dag(np.random.default_rng([int(seed), PAPER_RANDOM_DAG_STREAM]), num_roles, density)


_DENSITY = dict(config="graphs.candidate_density_range")
_SEED = dict(config="seed")


@dataclasses.dataclass(frozen=True)
class FullGraphSettings:
  """``model`` as one call per role (no proposers) and as decision node, on the full DAG of the roles."""

  model: str = option("", config="llm.decision_model", pool_model=True)
  num_proposers: int = option(0, config="selector.num_proposers")  # empty slots: plans keep the [R][P+1] shape


def full_graph(ctx: MethodContext, settings: FullGraphSettings) -> list[QueryResult]:
  """The paper's Full-Graph: roles + 1 calls per query."""
  adjacency = graphs.full(len(ctx.task.roles))
  return execute_plans(ctx, single_call_role_plans(ctx.problems, ctx.task.roles, settings.model, adjacency,
                                                   num_proposers=settings.num_proposers))


@dataclasses.dataclass(frozen=True)
class RandomGraphSettings(FullGraphSettings):
  """As full_graph on ONE seeded random DAG for the whole split, in the ``density`` range."""

  seed: int = option(0, **_SEED)
  density: tuple[float, float] = option((0.0, 1.0), **_DENSITY)


def random_graph(ctx: MethodContext, settings: RandomGraphSettings) -> list[QueryResult]:
  """The paper's Random-Graph: roles + 1 calls per query."""
  adjacency = paper_random_dag(settings.seed, len(ctx.task.roles), settings.density)
  return execute_plans(ctx, single_call_role_plans(ctx.problems, ctx.task.roles, settings.model, adjacency,
                                                   num_proposers=settings.num_proposers))


@dataclasses.dataclass(frozen=True)
class SelectorSettings:
  """The selector's models (no options)."""


def selector_full_graph(ctx: MethodContext, settings: SelectorSettings) -> list[QueryResult]:
  """The selector's models on the full DAG of the roles."""
  del settings  # no options
  trained = ctx.require_trained("selector_full_graph")
  full = [graphs.full(len(trained.system.roles))] * len(ctx.problems)
  return execute_plans(ctx, trained.plans(trained.selector_assignments(), full))


@dataclasses.dataclass(frozen=True)
class SelectorRandomGraphSettings:
  """The selector's models on a seeded random DAG per query, in the ``density`` range."""

  seed: int = option(0, **_SEED)
  density: tuple[float, float] = option((0.0, 1.0), **_DENSITY)


def selector_random_graph(ctx: MethodContext, settings: SelectorRandomGraphSettings) -> list[QueryResult]:
  trained = ctx.require_trained("selector_random_graph")
  rng = np.random.default_rng([int(settings.seed), SELECTOR_RANDOM_DAGS_STREAM])
  dags = np.stack([graphs.random_dag(rng, len(trained.system.roles), settings.density) for _ in ctx.problems])
  return execute_plans(ctx, trained.plans(trained.selector_assignments(), dags))


@dataclasses.dataclass(frozen=True)
class HieraMASSettings:
  """HieraMAS as trained: the selector's models on the classifier's best of ``num_candidates`` DAGs."""

  num_candidates: int = option(0, config="graphs.num_candidates")  # named in the setup column


def hieramas(ctx: MethodContext, settings: HieraMASSettings) -> list[QueryResult]:
  del settings  # the system's own candidate pool
  return ctx.require_trained("hieramas").run()


@dataclasses.dataclass(frozen=True)
class NoSelectionSettings:
  """``model`` at every position, on the classifier's DAG."""

  model: str = model_option("fixed_model")


def hieramas_no_selection(ctx: MethodContext, settings: NoSelectionSettings) -> list[QueryResult]:
  trained = ctx.require_trained("hieramas_no_selection")
  return execute_plans(ctx, trained.plans(trained.fixed_assignments(settings.model), trained.classifier_graphs()))


@dataclasses.dataclass(frozen=True)
class NoClassifierSettings:
  """The selector's models on one seeded DAG of the candidate pool, the same for every query."""

  seed: int = option(0, **_SEED)


def hieramas_no_classifier(ctx: MethodContext, settings: NoClassifierSettings) -> list[QueryResult]:
  trained = ctx.require_trained("hieramas_no_classifier")
  pool = trained.candidate_pool()
  adj = pool[int(np.random.default_rng([int(settings.seed), ONE_POOL_DAG_STREAM]).integers(len(pool)))]
  return execute_plans(ctx, trained.plans(trained.selector_assignments(), np.stack([adj] * len(ctx.problems))))

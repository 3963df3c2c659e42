"""Host-side rollouts: selector actions -> plans -> executor -> graded outcomes.

Nothing here is jitted; the jitted pieces (selector forward pass, sampling) are
called with static shapes so they compile once.

A query with any failed LLM call is not graded: ``Outcome.valid`` is False, and
training masks it out of the loss, the baselines and the averages. A batch in
which more than ``llm.max_failed_fraction`` of the queries failed (or every
query) raises :class:`FailedCallsError` before anything learns from it or saves it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hieramas_jax import distributed, executor, policy, rewards
from hieramas_jax.executor import check_failures
from hieramas_jax.models import selector as sel
from hieramas_jax.results import QueryResult
from hieramas_jax.tasks.base import Problem
from hieramas_jax.train.environment import Environment


@dataclasses.dataclass
class Outcome:
  """Graded results of a batch of plans (arrays over queries B and roles R)."""

  results: list[QueryResult]  # each graded: ``correct`` is ``final_solved`` where valid, else None
  node_solved: np.ndarray  # [B, R] bool (False where the role gave no output)
  role_ran: np.ndarray  # [B, R] bool: the role produced an output
  final_solved: np.ndarray  # [B] bool
  valid: np.ndarray  # [B] bool: no call failed, so the outcome can be graded
  node_cost: np.ndarray  # [B, R] USD of each role's own calls
  total_cost: np.ndarray  # [B] USD of all calls
  decision_cost: np.ndarray  # [B] USD of the decision call

  def system_cost(self, which: str) -> np.ndarray:
    if which == "total":
      return self.total_cost
    if which == "decision":
      return self.decision_cost
    raise ValueError(f"system cost {which!r}; choose 'total' or 'decision'")

  def system_reward(self, c_s: float, c_f: float, which: str = "total") -> np.ndarray:
    return np.asarray(rewards.output_reward(self.final_solved, self.system_cost(which), c_s, c_f))


def selection_mask(env: Environment, batch: int) -> sel.SelectionMask:
  c = env.config.selector
  return sel.SelectionMask.build(batch, env.num_roles, c.num_proposers, len(env.specs),
                                 model_allowed=env.model_allowed, synthesizer_may_skip=c.synthesizer_may_skip,
                                 proposer_may_skip=c.proposer_may_skip)


def make_plans(env: Environment, problems: Sequence[Problem], actions: np.ndarray, adjs: np.ndarray,
               sample: int | Sequence[int]) -> list[executor.Plan]:
  """Executor plans; ``sample`` (one per plan, or one for all) picks fresh LLM draws per episode."""
  assignments = sel.actions_to_assignment(actions, env.model_names)
  samples = [int(sample)] * len(problems) if np.ndim(sample) == 0 else [int(s) for s in sample]
  return [executor.Plan(problem=p, roles=env.roles, assignment=a, adjacency=np.asarray(adj),
                        decision_model=env.decision_model, sample=s)
          for p, a, adj, s in zip(problems, assignments, adjs, samples)]


def run_plans(env: Environment, problems: Sequence[Problem], plans: Sequence[executor.Plan],
              trace_path=None, *, where: str = "a batch") -> Outcome:
  """Executes plans and grades every role output and final answer of the queries without a failed call.

  In a multi-host run each process executes and grades its contiguous share of
  the plans against its own endpoints, and every process gets the whole graded
  batch back (``distributed.run_shares``); a trace goes to one file per process.
  Raises FailedCallsError (naming ``where``, the count and the first error) when
  too many queries failed; see ``check_failures``. Every process raises it alike.
  """
  if trace_path is not None and distributed.process_count() > 1:
    trace_path = f"{trace_path}.process-{distributed.process_index()}"
  rows = distributed.run_shares(list(zip(problems, plans)), lambda items: _run_and_grade(env, items, trace_path),
                                f"graded queries of {where}")
  results = [row[0] for row in rows]
  check_failures(results, float(env.config.llm.max_failed_fraction), where)
  b, r = len(plans), env.num_roles
  node_solved = np.array([row[1] for row in rows], bool).reshape(b, r)
  role_ran = np.array([row[2] for row in rows], bool).reshape(b, r)
  final_solved = np.array([row[3] for row in rows], bool).reshape(b)
  valid = np.array([not res.failed for res in results], bool)
  node_cost = np.array([res.role_costs() for res in results], np.float64).reshape(b, r)
  total = np.array([res.cost_usd for res in results], np.float64)
  decision = np.array([res.decision_cost for res in results], np.float64)
  return Outcome(results, node_solved, role_ran, final_solved, valid, node_cost, total, decision)


def _run_and_grade(env: Environment, items: Sequence[tuple[Problem, executor.Plan]],
                   trace_path) -> list[tuple[QueryResult, list[bool], list[bool], bool]]:
  """(result, node solved [R], role ran [R], final solved) per (problem, plan); failed queries are not graded."""
  if not items:
    return []
  problems = [p for p, _ in items]
  results = executor.execute([plan for _, plan in items], env.backend, env.task, params=env.generation_params(),
                             trace_path=trace_path)
  r = env.num_roles
  node_solved = [[False] * r for _ in results]
  final_solved = [False] * len(results)
  # Grade everything in one call so tasks with expensive graders can parallelise; failed queries are never graded.
  graded, slots = [], []
  for i, res in enumerate(results):
    if res.failed:
      continue
    graded.append((problems[i], res.final_text))
    slots.append((i, -1))
    for j, text in enumerate(res.role_outputs):
      if text is not None and env.gives_answer[j]:
        graded.append((problems[i], text))
        slots.append((i, j))
  verdicts = env.task.grade_many([p for p, _ in graded], [t for _, t in graded]) if graded else []
  for (i, j), ok in zip(slots, verdicts):
    if j < 0:
      final_solved[i] = bool(ok)
      results[i].correct = bool(ok)
    else:
      node_solved[i][j] = bool(ok)
  return [(res, node_solved[i], [text is not None for text in res.role_outputs], final_solved[i])
          for i, res in enumerate(results)]


def credit(env: Environment, outcome: Outcome, alpha: float) -> np.ndarray:
  """Multi-level reward [B, R] of a graded batch."""
  c = env.config.reward
  return np.asarray(rewards.multilevel_reward(
      outcome.node_solved, outcome.node_cost.astype(np.float32), outcome.final_solved,
      outcome.system_cost(c.system_cost).astype(np.float32), env.gives_answer, outcome.role_ran, alpha,
      c.cost_solved, c.cost_failed))


def greedy_actions(env: Environment, graphdef, params, split: str, index: np.ndarray) -> np.ndarray:
  """The selector's argmax assignment [b, R, P+1] for problems ``index`` of a split."""
  qr = jnp.asarray(env.query_role_emb[split][index])
  logits = sel.selector_logits(graphdef, params, qr, jnp.asarray(env.option_emb))
  return np.asarray(sel.argmax(logits, selection_mask(env, len(index)).valid))


# ---------------------------------------------------------------------------
# Inference rules on the selector's argmax (config.inference; defined in hieramas_jax.inference_rules)
# ---------------------------------------------------------------------------

def inference_actions(env: Environment, logits, problems: Sequence[Problem]) -> np.ndarray:
  """The selector's choices [B, R, P+1] under ``config.inference`` (``policy.choose_actions``)."""
  c = env.config
  rules = c.get("inference")
  return policy.choose_actions(np.asarray(logits), np.asarray(selection_mask(env, len(problems)).valid),
                               env.gives_answer, seed=c.seed, query_ids=[p.uid for p in problems],
                               num_proposers=int(c.selector.num_proposers),
                               max_skipped_roles=int(rules.max_skipped_roles) if rules is not None else -1,
                               rotate_top_n=int(rules.rotate_top_n) if rules is not None else 0)


def inference_greedy_actions(env: Environment, graphdef, params, split: str, index: np.ndarray) -> np.ndarray:
  """``greedy_actions`` with the inference rules applied: what HieraMAS runs for problems ``index`` of a split."""
  qr = jnp.asarray(env.query_role_emb[split][index])
  logits = sel.selector_logits(graphdef, params, qr, jnp.asarray(env.option_emb))
  return inference_actions(env, logits, [env.splits[split][int(i)] for i in index])


def fixed_random_dags(pool: np.ndarray, count: int, seed: int) -> np.ndarray:
  """A seeded choice of one pool DAG per query (the evaluation graphs of stage 1)."""
  rng = np.random.default_rng(seed)
  return pool[rng.integers(0, len(pool), count)]


def sample_key(seed: int, stream: int, step: int) -> jax.Array:
  """Step-derived randomness: a resumed run draws exactly what an uninterrupted one would."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)

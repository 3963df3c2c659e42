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
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hieramas_jax import executor, rewards
from hieramas_jax.executor import FailedCallsError, check_failures  # re-exported: training raises them
from hieramas_jax.models import selector as sel
from hieramas_jax.tasks.base import Problem
from hieramas_jax.train.environment import Environment


@dataclasses.dataclass
class Outcome:
  """Graded results of a batch of plans (arrays over queries B and roles R)."""

  results: list[executor.QueryResult]
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

  Raises FailedCallsError (naming ``where``, the count and the first error) when
  too many queries failed; see ``check_failures``.
  """
  results = executor.execute(plans, env.backend, env.task, params=env.generation_params(), trace_path=trace_path)
  check_failures(results, float(env.config.llm.max_failed_fraction), where)
  b, r = len(plans), env.num_roles
  node_solved = np.zeros((b, r), bool)
  role_ran = np.zeros((b, r), bool)
  final_solved = np.zeros(b, bool)
  valid = np.array([not res.failed for res in results], bool)
  # Grade everything in one call so tasks with expensive graders can parallelise; failed queries are never graded.
  items, slots = [], []
  for i, res in enumerate(results):
    for j, text in enumerate(res.role_outputs):
      role_ran[i, j] = text is not None
    if not valid[i]:
      continue
    items.append((problems[i], res.final_text))
    slots.append((i, -1))
    for j, text in enumerate(res.role_outputs):
      if text is not None and env.gives_answer[j]:
        items.append((problems[i], text))
        slots.append((i, j))
  verdicts = env.task.grade_many([p for p, _ in items], [t for _, t in items]) if items else []
  for (i, j), ok in zip(slots, verdicts):
    if j < 0:
      final_solved[i] = ok
    else:
      node_solved[i, j] = ok
  node_cost = np.array([res.role_costs() for res in results], np.float64).reshape(b, r)
  total = np.array([res.total_cost for res in results], np.float64)
  decision = np.array([res.decision_cost for res in results], np.float64)
  return Outcome(results, node_solved, role_ran, final_solved, valid, node_cost, total, decision)


def credit(env: Environment, outcome: Outcome, alpha: float) -> np.ndarray:
  """Multi-level reward [B, R] of a graded batch."""
  c = env.config.stage1
  return np.asarray(rewards.multilevel_reward(
      outcome.node_solved, outcome.node_cost.astype(np.float32), outcome.final_solved,
      outcome.system_cost(c.system_cost).astype(np.float32), env.gives_answer, outcome.role_ran, alpha,
      c.reward_cost_solved, c.reward_cost_failed))


def greedy_actions(env: Environment, graphdef, params, split: str, index: np.ndarray) -> np.ndarray:
  """The selector's argmax assignment [b, R, P+1] for problems ``index`` of a split."""
  qr = jnp.asarray(env.query_role_emb[split][index])
  logits = sel.selector_logits(graphdef, params, qr, jnp.asarray(env.option_emb))
  return np.asarray(sel.argmax(logits, selection_mask(env, len(index)).valid))


# ---------------------------------------------------------------------------
# Inference rules on the selector's argmax (config.inference)
# ---------------------------------------------------------------------------

_ROTATION_STREAM = 6  # keeps the proposer-row draws apart from the other seeded streams


def query_key(uid: str) -> int:
  """A stable integer of a query's uid (the same in every process and batch)."""
  return int(hashlib.sha1(uid.encode("utf-8")).hexdigest()[:12], 16)


def rotation_rows(seed: int, problems: Sequence[Problem], num_roles: int, num_proposers: int) -> np.ndarray:
  """The proposer row [B, R] whose ranking each role's proposers rotate over, seeded per query (uid), never global."""
  if num_proposers < 1:
    return np.zeros((len(problems), num_roles), np.int64)
  return np.array([np.random.default_rng([int(seed), _ROTATION_STREAM, query_key(p.uid)]).integers(
      0, num_proposers, num_roles) for p in problems], np.int64).reshape(len(problems), num_roles)


def apply_inference_rules(logits: np.ndarray, valid: np.ndarray, gives_answer: np.ndarray, *,
                          max_skipped_roles: int = -1, rotate_top_n: int = 0,
                          rotation_row: np.ndarray | None = None) -> np.ndarray:
  """The paper's inference choices [B, R, P+1] from selector logits [B, R, P+1, M+1] (option M is ``skip``).

  Every position starts at its argmax over the valid options. Then:

  * Skip cap (``max_skipped_roles`` >= 0): of the roles whose synthesizer argmax
    is ``skip``, at most that many are dropped, those with the highest p(skip)
    (softmax over the synthesizer's valid options) first, and never every
    answer-giving role (the answer role among them with the lowest p(skip) is
    kept). A kept role's synthesizer takes its best non-skip model (it stays
    dropped only when every model is excluded). -1: today's rule, every such role
    is dropped, possibly all (the decision node then answers alone).
  * Proposer rotation (``rotate_top_n`` = N > 0): in every role that runs, the
    proposers take the top-N allowed models of one proposer row's logits
    (``rotation_row`` [B, R], seeded per query), proposer i getting top[i mod N]
    (fewer when fewer models are allowed). As in the paper's code the ranking
    leaves ``skip`` out: with rotation on every proposer of a running role runs,
    even one whose own argmax was ``skip``. The synthesizer keeps its choice.

  Pure numpy on the host; ``gives_answer`` is [R] bool.
  """
  logits = np.asarray(logits, np.float64)
  valid = np.asarray(valid, bool)
  b, r, positions, options = logits.shape
  skip, synth = options - 1, positions - 1
  masked = np.where(valid, logits, -np.inf)
  actions = masked.argmax(-1)
  if max_skipped_roles >= 0 and b and r:
    synth_logits = masked[:, :, synth, :]  # [B, R, M+1]
    top = synth_logits.max(-1, keepdims=True)
    weights = np.exp(synth_logits - top)
    p_skip = weights[..., skip] / weights.sum(-1)
    best_model = synth_logits[..., :skip].argmax(-1)
    has_model = np.isfinite(synth_logits[..., :skip]).any(-1)
    answer_roles = np.asarray(gives_answer, bool)
    for q in range(b):
      wants_skip = np.flatnonzero(actions[q, :, synth] == skip)
      ranked = wants_skip[np.argsort(-p_skip[q, wants_skip], kind="stable")]
      dropped = list(ranked[:max_skipped_roles])
      # A role that cannot run (every model excluded) is dropped whatever the cap says.
      dropped += [int(j) for j in ranked[max_skipped_roles:] if not has_model[q, j]]
      if answer_roles.any() and all(j in dropped for j in np.flatnonzero(answer_roles)):
        keep = [j for j in dropped if answer_roles[j] and has_model[q, j]]
        if keep:
          dropped.remove(min(keep, key=lambda j: p_skip[q, j]))
      for j in wants_skip:
        if j not in dropped:
          actions[q, j, synth] = best_model[q, j]
  if rotate_top_n > 0 and synth > 0:
    rows = np.zeros((b, r), np.int64) if rotation_row is None else np.asarray(rotation_row, np.int64)
    if rows.shape != (b, r) or (rows < 0).any() or (rows >= synth).any():
      raise ValueError(f"rotation_row has shape {rows.shape} or values outside [0, {synth}); expected [{b}, {r}] "
                       "proposer indices (rotation_rows gives them)")
    for q in range(b):
      for j in range(r):
        if actions[q, j, synth] == skip:
          continue  # a dropped role makes no calls
        row = masked[q, j, rows[q, j], :skip]
        allowed = np.flatnonzero(np.isfinite(row))
        if allowed.size == 0:
          continue  # every model excluded: the proposers keep their (skip) argmax
        ranked = allowed[np.argsort(-row[allowed], kind="stable")][:rotate_top_n]
        actions[q, j, :synth] = ranked[np.arange(synth) % len(ranked)]
  return actions


def inference_actions(env: Environment, logits, problems: Sequence[Problem]) -> np.ndarray:
  """The selector's choices [B, R, P+1] under ``config.inference`` (``apply_inference_rules``)."""
  c = env.config
  rules = c.get("inference")
  cap = int(rules.max_skipped_roles) if rules is not None else -1
  top_n = int(rules.rotate_top_n) if rules is not None else 0
  valid = np.asarray(selection_mask(env, len(problems)).valid)
  logits = np.asarray(logits)
  if cap < 0 and top_n == 0:  # today's plain argmax, bit for bit the same as greedy selection
    return np.asarray(sel.argmax(jnp.asarray(logits), jnp.asarray(valid)))
  rows = rotation_rows(c.seed, problems, env.num_roles, int(c.selector.num_proposers)) if top_n else None
  return apply_inference_rules(logits, valid, env.gives_answer, max_skipped_roles=cap, rotate_top_n=top_n,
                               rotation_row=rows)


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

"""Cost-aware rewards and multi-level credit assignment (pure functions of arrays).

The reward of one graded output is the paper's cost-aware formula of
``reward_formula`` (the one the simulator's oracle uses too).

Multi-level credit for role r of query b:

    reward[b, r] = alpha * node_reward[b, r] + (1 - alpha) * system_reward[b]   role gives an answer
                 = system_reward[b]                                              planner / analyst
                 = 0                                                             role skipped (or padding)

where a node reward grades the role's own synthesizer output at the cost of the
role's own calls, and the system reward grades the final answer at the total
cost of the query (or, optionally, the decision node's cost alone, as the
reference code did).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from hieramas_jax import reward_formula
from hieramas_jax.reward_formula import DEFAULT_C_F, DEFAULT_C_S


def output_reward(solved: jax.Array, cost: jax.Array, c_s: float = DEFAULT_C_S,
                  c_f: float = DEFAULT_C_F) -> jax.Array:
  """Reward of graded outputs (any shape) given their cost in USD (``reward_formula.cost_aware_reward``)."""
  chex.assert_equal_shape([solved, cost])
  cost = jnp.asarray(cost, jnp.float32)
  # Any nonzero entry counts as solved; as 0.0/1.0 the formula's blend is exactly one branch.
  solved = jnp.asarray(solved, bool).astype(jnp.float32)
  return reward_formula.cost_aware_reward(solved, cost, c_s, c_f, xp=jnp)


def multilevel_reward(
    node_solved: jax.Array,
    node_cost: jax.Array,
    system_solved: jax.Array,
    system_cost: jax.Array,
    gives_answer: jax.Array,
    role_ran: jax.Array,
    alpha: float,
    c_s: float = DEFAULT_C_S,
    c_f: float = DEFAULT_C_F,
) -> jax.Array:
  """Per-role credit [B, R].

  Args:
    node_solved: [B, R] whether the role's synthesizer output solves the problem.
    node_cost: [B, R] cost of the role's own calls.
    system_solved: [B] whether the final answer solves the problem.
    system_cost: [B] the query's cost counted by the system reward.
    gives_answer: [R] or [B, R] whether a role states an answer of its own.
    role_ran: [B, R] False for skipped and padded roles.
    alpha: weight of the node reward, in [0, 1].
  """
  chex.assert_rank([node_solved, node_cost, system_solved, system_cost, role_ran], [2, 2, 1, 1, 2])
  chex.assert_equal_shape([node_solved, node_cost, role_ran])
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
  node = output_reward(node_solved, node_cost, c_s, c_f)
  system = output_reward(system_solved, system_cost, c_s, c_f)[:, None]
  gives = jnp.broadcast_to(jnp.asarray(gives_answer, bool), node.shape)
  credit = jnp.where(gives, alpha * node + (1.0 - alpha) * system, system)
  return jnp.where(jnp.asarray(role_ran, bool), credit, 0.0)


def cosine_schedule(step: jax.Array, total_steps: int, start: float, end: float) -> jax.Array:
  """A value going from ``start`` (step 0) to ``end`` (the last step) on a half cosine."""
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(1, total_steps - 1), 0.0, 1.0)
  return end + 0.5 * (start - end) * (1.0 + jnp.cos(jnp.pi * frac))


# The sampling temperature anneals on the same half cosine (stage 1: high to low).
cosine_temperature = cosine_schedule


def advantages(rewards: jax.Array, weights: jax.Array, baseline: jax.Array) -> jax.Array:
  """Reward minus baseline on the rows that count, zero elsewhere; no gradient flows through."""
  chex.assert_equal_shape([rewards, weights])
  return jax.lax.stop_gradient(jnp.where(weights > 0, rewards - baseline, 0.0))


def batch_mean_baseline(rewards: jax.Array, weights: jax.Array, axis: int = 0) -> jax.Array:
  """Leave-one-out mean of each reward over the other valid entries along ``axis`` (queries of the batch)."""
  chex.assert_equal_shape([rewards, weights])
  w = weights.astype(jnp.float32)
  total = (rewards * w).sum(axis, keepdims=True)
  others = w.sum(axis, keepdims=True) - w
  return jnp.where(others > 0, (total - rewards * w) / jnp.maximum(others, 1.0), 0.0)


def group_baseline(rewards: jax.Array, weights: jax.Array, group_size: int) -> jax.Array:
  """Leave-one-out mean over the other samples of the same query: [B, R], B = queries x group_size.

  Rows of a group are consecutive. Comparing samples of one query removes the
  query's difficulty from the advantage, the largest source of variance here.
  A row with no other counted row in its group (the only sample of its query
  that ran a role) gets baseline 0, the credit of the skipped alternative. That
  is deliberate: replacing it by the batch mean was measured worse (seed 0 of
  bench/train_sim.py's world: 0.40 vs 0.78 of the oracle gap), because the
  comparison with 0 is the only pressure towards skipping a costly role.
  """
  chex.assert_equal_shape([rewards, weights])
  b, r = rewards.shape
  if b % group_size:
    raise ValueError(f"batch of {b} rows is not a whole number of groups of {group_size}")
  grouped = (b // group_size, group_size, r)
  return batch_mean_baseline(jnp.reshape(rewards, grouped), jnp.reshape(weights, grouped), axis=1).reshape(b, r)


def ema_update(baseline: jax.Array, rewards: jax.Array, weights: jax.Array, decay: float = 0.9) -> jax.Array:
  """Per-role exponential moving average of rewards [R], updated on valid entries only."""
  w = weights.astype(jnp.float32)
  count = w.sum(0)
  mean = jnp.where(count > 0, (rewards * w).sum(0) / jnp.maximum(count, 1.0), baseline)
  return jnp.where(count > 0, decay * baseline + (1.0 - decay) * mean, baseline)


def run_skip_advantages(decision_reward: jax.Array, valid: jax.Array, baseline: str = "loo",
                        group_size: int = 1) -> jax.Array:
  """Advantage [B, R] of every role's run/skip decision.

  ``decision_reward`` [B, R] rates each row's decision (run or skip) on one
  scale for both, e.g. the system reward; every row of a valid query counts,
  the ones that skipped the role included. ``baseline``: ``'loo'``, the
  leave-one-out mean over the other valid samples of the same query (rows in
  consecutive groups of ``group_size``; 1 compares with the rest of the batch),
  or ``'none'``.
  """
  chex.assert_rank([decision_reward, valid], [2, 1])
  reward = jnp.asarray(decision_reward, jnp.float32)
  counted = jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None], reward.shape)
  if baseline == "none":
    base = jnp.zeros_like(reward)
  elif baseline == "loo":
    base = group_baseline(reward, counted, group_size) if group_size > 1 else batch_mean_baseline(reward, counted)
  else:
    raise ValueError(f"run/skip baseline {baseline!r}; choose 'loo' or 'none'")
  return advantages(reward, counted, base)

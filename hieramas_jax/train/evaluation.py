"""Held-out comparison at the end of training: the learned system against random choices.

The learned rows use the selector as inference does (``config.inference``: the
skip cap and proposer rotation of ``rollout.inference_actions``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hieramas_jax.models import gcn
from hieramas_jax.models import selector as sel
from hieramas_jax.train import rollout
from hieramas_jax.train.environment import Environment


def choose_graphs(env: Environment, cls_graphdef, cls_params, split: str,
                  pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Index of the best-scoring candidate per query, and all scores [Q, K]."""
  scores = np.asarray(gcn.score_pool(cls_graphdef, cls_params, jnp.asarray(env.query_emb[split]),
                                     jnp.asarray(pool, jnp.float32), impl=env.config.gcn.impl))
  return scores.argmax(axis=1), scores


def random_actions(env: Environment, count: int, seed: int) -> np.ndarray:
  """Uniform choice among the valid options of every position."""
  mask = rollout.selection_mask(env, count).valid
  return np.asarray(sel.sample(jax.random.key(seed), jnp.zeros(mask.shape), mask, 1.0))


def summarize(env: Environment, outcome: rollout.Outcome) -> dict[str, float]:
  """Means over the queries without a failed call; ``failed`` is the share of the others, ``truncated`` counts
  replies cut at max_tokens."""
  c = env.config.reward
  reward = outcome.system_reward(c.cost_solved, c.cost_failed, c.system_cost)
  v = outcome.valid
  nan = float("nan")
  return {"reward": float(reward[v].mean()) if v.any() else nan,
          "accuracy": float(outcome.final_solved[v].mean()) if v.any() else nan,
          "cost_usd": float(outcome.total_cost[v].mean()) if v.any() else nan,
          "calls": float(np.mean([len(r.calls) for r, ok in zip(outcome.results, v) if ok])) if v.any() else nan,
          "failed": float((~v).mean()),
          "truncated": int(sum(r.truncated for r in outcome.results))}


def compare_on_split(env: Environment, sel_graphdef, sel_params, cls_graphdef, cls_params, pool: np.ndarray,
                     split: str = "test") -> dict[str, dict[str, float]]:
  """HieraMAS (selector + best-of-K DAG) vs selector on a random DAG vs random assignment on a random DAG."""
  problems = env.splits[split]
  n = len(problems)
  learned = rollout.inference_greedy_actions(env, sel_graphdef, sel_params, split, np.arange(n))
  random_dags = rollout.fixed_random_dags(pool, n, env.config.seed + 11)
  rows = {}
  if cls_params is not None:
    best, _ = choose_graphs(env, cls_graphdef, cls_params, split, pool)
    rows["hieramas"] = (learned, pool[best])
  rows["selector_random_dag"] = (learned, random_dags)
  rows["random_assignment_random_dag"] = (random_actions(env, n, env.config.seed + 13), random_dags)
  out = {}
  for name, (actions, adjs) in rows.items():
    outcome = rollout.run_plans(env, problems, rollout.make_plans(env, problems, actions, adjs, sample=0),
                                where=f"{split} comparison ({name})")
    out[name] = summarize(env, outcome)
  return out

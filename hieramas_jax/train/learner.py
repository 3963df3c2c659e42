"""Jitted parameter updates of both stages (pure functions of arrays).

Stage 1: REINFORCE on the selector with an entropy bonus. Stage 2: class-weighted
binary cross-entropy on the graph classifier. Both use AdamW behind global-norm
clipping and raise on a non-finite loss (checked on the host by the caller).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hieramas_jax.models import selector as sel


def make_optimizer(learning_rate: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(learning_rate, weight_decay=weight_decay))


class SelectorBatch(NamedTuple):
  """One stage-1 batch; every array is static-shaped so nothing recompiles."""

  query_role_emb: jax.Array  # [B, R, D]
  option_emb: jax.Array  # [M + 1, Dp]
  valid: jax.Array  # [B, R, P + 1, M + 1] bool
  actions: jax.Array  # [B, R, P + 1] int
  advantages: jax.Array  # [B, R] (stop-gradient) of the role's positions, given that the role ran
  role_advantages: jax.Array  # [B, R] (stop-gradient) of each role's run/skip decision
  weights: jax.Array  # [B] 1 for queries that count (no failed call), else 0


def reinforce_loss(params, graphdef, batch: SelectorBatch, temperature, entropy_coef) -> tuple[jax.Array, dict]:
  """Policy-gradient loss: -E[sum of log pi(decision) * its advantage] - entropy_coef * H.

  The synthesizer's action factors exactly into whether the role runs and which
  model, given that it runs: log pi(m) = log pi(run) + log pi(m | run). The
  proposers' actions and log pi(m | run) take ``advantages`` (the role's credit);
  log pi(run) or log pi(skip) takes ``role_advantages``. Passing the role's
  credit advantage as ``role_advantages`` on the rows where the role ran (0 where
  it was skipped) gives plain REINFORCE on the role's credit.
  """
  chex.assert_rank([batch.actions, batch.advantages, batch.role_advantages, batch.weights], [3, 2, 2, 1])
  chex.assert_equal_shape([batch.advantages, batch.role_advantages])
  logits = nnx.merge(graphdef, params)(batch.query_role_emb, batch.option_emb)
  all_lp = sel.log_probs(logits, batch.valid, temperature)  # [B, R, P+1, M+1]
  lp = jnp.take_along_axis(all_lp, batch.actions[..., None], axis=-1)[..., 0]  # [B, R, P+1]
  ent = sel.entropy(logits, batch.valid, temperature)
  synth, skip = batch.actions.shape[-1] - 1, logits.shape[-1] - 1
  lp_skip = all_lp[:, :, synth, skip]
  lp_run = jax.nn.logsumexp(all_lp[:, :, synth, :skip], axis=-1)
  ran = batch.actions[:, :, synth] != skip
  lp_decision = jnp.where(ran, lp_run, lp_skip)
  lp_given_run = lp[:, :, :synth].sum(-1) + jnp.where(ran, lp[:, :, synth] - lp_run, 0.0)
  w = batch.weights.astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  adv = jax.lax.stop_gradient(batch.advantages)
  role_adv = jax.lax.stop_gradient(batch.role_advantages)
  pg = -jnp.sum((lp_given_run * adv + lp_decision * role_adv) * w[:, None]) / denom
  entropy = jnp.sum(ent.sum((1, 2)) * w) / denom
  loss = pg - entropy_coef * entropy
  return loss, {"loss": loss, "pg_loss": pg, "entropy": entropy}


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"), donate_argnames=("params", "opt_state"))
def selector_update(graphdef, tx: optax.GradientTransformation, params, opt_state, batch: SelectorBatch,
                    temperature, entropy_coef, lr_scale=1.0):
  """One REINFORCE step; ``lr_scale`` multiplies the step (a schedule outside the optimizer state)."""
  (_, metrics), grads = jax.value_and_grad(reinforce_loss, has_aux=True)(params, graphdef, batch, temperature,
                                                                         entropy_coef)
  updates, opt_state = tx.update(grads, opt_state, params)
  updates = jax.tree_util.tree_map(lambda u: u * lr_scale, updates)
  params = optax.apply_updates(params, updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return params, opt_state, metrics


class ClassifierBatch(NamedTuple):
  query_emb: jax.Array  # [B, D]
  adjs: jax.Array  # [B, G, N, N]
  labels: jax.Array  # [B, G] 0/1
  weights: jax.Array  # [B, G] 1 for graphs that count (ran without failed calls)
  role_mask: jax.Array  # [N]


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array, pos_weight) -> jax.Array:
  """Class-weighted binary cross-entropy; positives weigh ``pos_weight`` (n_neg / n_pos)."""
  chex.assert_equal_shape([logits, labels, weights])
  labels = labels.astype(jnp.float32)
  per = -(pos_weight * labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
  per_w = weights * jnp.where(labels > 0, pos_weight, 1.0)
  return jnp.sum(per * weights) / jnp.maximum(jnp.sum(per_w), 1e-6)


def classifier_loss(params, graphdef, batch: ClassifierBatch, pos_weight, impl: str):
  logits = nnx.merge(graphdef, params)(batch.query_emb, batch.adjs, batch.role_mask, impl=impl)
  return weighted_bce(logits, batch.labels, batch.weights, pos_weight)


# Jitted stage-2 steps of recently used (graphdef, optimizer, form), keyed by identity; each entry holds its
# graphdef and optimizer so their ids are not reused while it lives. Bounded: a process builds few classifiers.
_CLASSIFIER_STEPS: dict[tuple[int, int, str], tuple[Any, Any, Any]] = {}
_MAX_CLASSIFIER_STEPS = 16


def classifier_step(graphdef, tx: optax.GradientTransformation, impl: str = "dense"):
  """The jitted stage-2 gradient step of ``graphdef`` / ``tx`` / ``impl``: (params, opt_state, batch, pos_weight).

  Jitted once per graphdef, optimizer and form (the same function on every call
  with the same objects), closing over them: a static jit argument is hashed on
  every call, and a flax graphdef hashes in Python. Shapes are the only trace
  key: new values never retrace. ``params`` and ``opt_state`` are donated.
  """
  key = (id(graphdef), id(tx), impl)
  entry = _CLASSIFIER_STEPS.get(key)
  if entry is None or entry[0] is not graphdef or entry[1] is not tx:

    def step(params, opt_state, batch: ClassifierBatch, pos_weight):
      loss, grads = jax.value_and_grad(classifier_loss)(params, graphdef, batch, pos_weight, impl)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    entry = (graphdef, tx, jax.jit(step, donate_argnums=(0, 1)))
    _CLASSIFIER_STEPS.pop(key, None)
    if len(_CLASSIFIER_STEPS) >= _MAX_CLASSIFIER_STEPS:
      _CLASSIFIER_STEPS.pop(next(iter(_CLASSIFIER_STEPS)))  # the oldest
    _CLASSIFIER_STEPS[key] = entry
  return entry[2]


def classifier_update(graphdef, tx: optax.GradientTransformation, params, opt_state, batch: ClassifierBatch,
                      pos_weight, impl: str = "dense"):
  """One stage-2 step through ``classifier_step(graphdef, tx, impl)``: (params, opt_state, metrics)."""
  return classifier_step(graphdef, tx, impl)(params, opt_state, batch, pos_weight)


def check_finite(metrics: dict[str, Any], step: int, stage: str) -> None:
  """Raises on a non-finite loss so a broken run stops before it writes a checkpoint."""
  loss = float(metrics["loss"])
  if not jnp.isfinite(loss):
    raise FloatingPointError(f"{stage}: non-finite loss {loss} at step {step}; lower the learning rate or check "
                             "the rewards for NaN/inf (metrics: " +
                             ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items()) + ")")

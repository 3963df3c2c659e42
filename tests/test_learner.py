"""The stage-1 policy-gradient loss: how each decision's log-probability meets its advantage."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hieramas_jax.models import selector as sel
from hieramas_jax.train import learner

B, R, P, M, D = 4, 2, 2, 3, 8  # queries, roles, proposers, models, embedding size


def _setup(seed=0):
  model = sel.LLMSelector(P, D, D, hidden_dim=16, skip_head="gate", rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(seed)
  qr = jnp.asarray(rng.normal(size=(B, R, D)), jnp.float32)
  opts = jnp.asarray(rng.normal(size=(M + 1, D)), jnp.float32)
  valid = sel.SelectionMask.build(B, R, P, M).valid
  # Row 0 runs both roles, row 1 skips role 0's synthesizer, rows 2-3 mix proposer skips.
  actions = jnp.asarray([[[0, 1, 2], [M, 0, 1]],
                         [[1, 1, M], [2, M, 0]],
                         [[M, M, 1], [0, 2, M]],
                         [[2, 0, 0], [M, M, 2]]], jnp.int32)
  return graphdef, params, qr, opts, valid, actions


def _loss(graphdef, params, batch, temperature=1.3):
  return learner.reinforce_loss(params, graphdef, batch, temperature, 0.0)[0]


@pytest.mark.slow  # over 10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_role_credit_on_both_factors_is_plain_reinforce():
  """Advantages on 'which model' and the same advantage on 'run' (0 where skipped) = sum log pi(a) * A."""
  graphdef, params, qr, opts, valid, actions = _setup()
  adv = jnp.asarray(np.random.default_rng(1).normal(size=(B, R)), jnp.float32)
  ran = actions[:, :, P] != M
  adv = jnp.where(ran, adv, 0.0)  # a skipped role has no credit
  batch = learner.SelectorBatch(qr, opts, valid, actions, adv, adv, jnp.ones(B))

  def plain(p):
    logits = nnx.merge(graphdef, p)(qr, opts)
    lp = sel.log_prob(logits, valid, actions, 1.3)
    return -jnp.sum(lp.sum(-1) * adv) / B

  got = jax.grad(lambda p: _loss(graphdef, p, batch))(params)
  want = jax.grad(plain)(params)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_role_advantage_trains_only_the_run_skip_decision():
  graphdef, params, qr, opts, valid, actions = _setup()
  role_adv = jnp.asarray(np.random.default_rng(2).normal(size=(B, R)), jnp.float32)
  batch = learner.SelectorBatch(qr, opts, valid, actions, jnp.zeros((B, R)), role_adv, jnp.ones(B))

  def decision_only(p):
    logits = nnx.merge(graphdef, p)(qr, opts)
    prob_skip = jnp.exp(sel.log_probs(logits, valid, 1.3)[:, :, P, M])
    ran = actions[:, :, P] != M
    lp = jnp.where(ran, jnp.log1p(-prob_skip), jnp.log(prob_skip))
    return -jnp.sum(lp * role_adv) / B

  got = jax.grad(lambda p: _loss(graphdef, p, batch))(params)
  want = jax.grad(decision_only)(params)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The model preference given 'run' gets no gradient from it: at T = 1 the gate head's p(skip) = sigmoid(gate)
  # does not depend on the model logits, so the option-scoring layers get exactly zero.
  at_t1 = jax.grad(lambda p: _loss(graphdef, p, batch, 1.0))(params)
  np.testing.assert_allclose(at_t1["option_bias"]["kernel"], 0.0, atol=1e-7)
  assert np.abs(np.asarray(at_t1["gate_out"])).max() > 0


def test_invalid_queries_and_unskippable_synthesizers_contribute_nothing():
  graphdef, params, qr, opts, _, actions = _setup()
  valid = sel.SelectionMask.build(B, R, P, M, synthesizer_may_skip=False).valid
  actions = actions.at[:, :, P].set(0)  # every role runs
  role_adv = jnp.ones((B, R))
  batch = learner.SelectorBatch(qr, opts, valid, actions, jnp.zeros((B, R)), role_adv, jnp.ones(B))
  grads = jax.grad(lambda p: _loss(graphdef, p, batch))(params)
  assert all(np.abs(np.asarray(g)).max() < 1e-6 for g in jax.tree_util.tree_leaves(grads))  # p(run) = 1 always
  weights = jnp.asarray([1.0, 0.0, 0.0, 0.0])
  adv = jnp.asarray(np.random.default_rng(3).normal(size=(B, R)), jnp.float32)
  full = learner.SelectorBatch(qr, opts, valid, actions, adv, adv, weights)
  only0 = learner.SelectorBatch(qr, opts, valid, actions, adv.at[1:].set(99.0), adv.at[1:].set(99.0), weights)
  np.testing.assert_allclose(_loss(graphdef, params, full), _loss(graphdef, params, only0), rtol=1e-6)


def _stage2_setup(num_roles=5, batch=4, per_query=6, seed=0):
  from hieramas_jax.models import gcn  # pylint: disable=g-import-not-at-top
  model = gcn.GraphClassifier(num_roles, D, role_dim=8, hidden_dim=16, mlp_dim=16, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(3):
    adjs = np.triu(rng.integers(0, 2, (batch, per_query, num_roles, num_roles)), 1).astype(np.float32)
    batches.append(learner.ClassifierBatch(jnp.asarray(rng.normal(size=(batch, D)), jnp.float32), jnp.asarray(adjs),
                                           jnp.asarray(rng.integers(0, 2, (batch, per_query)), jnp.float32),
                                           jnp.ones((batch, per_query), jnp.float32),
                                           jnp.ones((num_roles,), jnp.float32)))
  return graphdef, nnx.to_pure_dict(state), batches


def test_stage2_epochs_trace_the_gradient_step_once_and_hash_no_graphdef(monkeypatch):
  """Two stage-2 epochs of new values: one trace of the loss, the graphdef never hashed after it."""
  import chex  # pylint: disable=g-import-not-at-top
  graphdef, params, batches = _stage2_setup()
  tx = learner.make_optimizer(1e-3, 1e-4, 1.0)
  opt_state = tx.init(params)
  monkeypatch.setattr(learner, "classifier_loss", chex.assert_max_traces(learner.classifier_loss, n=1))
  params, opt_state, _ = learner.classifier_update(graphdef, tx, params, opt_state, batches[0], 1.5)  # the trace
  hashes = []
  graphdef_type = type(graphdef)
  original_hash = graphdef_type.__hash__
  monkeypatch.setattr(graphdef_type, "__hash__", lambda self: hashes.append(1) or original_hash(self))
  losses = []
  for epoch in range(2):
    for cb in batches:
      params, opt_state, metrics = learner.classifier_update(graphdef, tx, params, opt_state, cb, 1.5 + epoch)
      losses.append(float(metrics["loss"]))
  assert not hashes
  assert learner.classifier_step(graphdef, tx) is learner.classifier_step(graphdef, tx)
  assert np.isfinite(losses).all() and len(set(losses)) > 1  # the steps ran on the new values


@pytest.mark.slow  # about 10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_cached_classifier_step_is_one_adamw_step_of_the_loss():
  graphdef, params, batches = _stage2_setup(seed=1)
  tx = learner.make_optimizer(1e-2, 1e-4, 1.0)
  loss, grads = jax.value_and_grad(learner.classifier_loss)(params, graphdef, batches[0], 2.0, "dense")
  updates, _ = tx.update(grads, tx.init(params), params)
  want = optax.apply_updates(params, updates)
  got, _, metrics = learner.classifier_update(graphdef, tx, jax.tree.map(jnp.copy, params), tx.init(params),
                                              batches[0], 2.0)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert learner.classifier_step(graphdef, tx, "dense_per_pair") is not learner.classifier_step(graphdef, tx)

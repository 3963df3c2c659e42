"""The stage-1 policy-gradient loss: how each decision's log-probability meets its advantage."""

import jax
import jax.numpy as jnp
import numpy as np
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

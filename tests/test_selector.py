"""LLM selector: shapes, masks, sampling distribution, log-probs, entropy."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hieramas_jax import config as config_lib
from hieramas_jax.models import selector as sel

B, R, P, M, D = 3, 4, 2, 5, 16


@pytest.fixture(scope="module")
def model_and_inputs():
  model = sel.LLMSelector(P, D, D, hidden_dim=32, rngs=nnx.Rngs(0))
  qr = jax.random.normal(jax.random.key(1), (B, R, D))
  opts = jax.random.normal(jax.random.key(2), (M + 1, D))
  return model, qr, opts


def test_logits_shape(model_and_inputs):
  model, qr, opts = model_and_inputs
  assert model(qr, opts).shape == (B, R, P + 1, M + 1)


def test_masks_hold_under_sampling_and_log_probs_normalise(model_and_inputs):
  model, qr, opts = model_and_inputs
  logits = model(qr, opts) * 0.0  # uniform logits: masked options would be drawn often if not masked
  mask = sel.SelectionMask.build(B, R, P, M, model_allowed=[True, False, True, True, False],
                                 synthesizer_may_skip=False, role_active=[True, True, True, False])
  actions = jax.vmap(lambda k: sel.sample(k, logits, mask.valid, 1.3))(jax.random.split(jax.random.key(0), 500))
  acts = np.asarray(actions)
  assert not np.isin(acts[:, :, :3], [1, 4]).any()  # excluded models never drawn
  assert not (acts[:, :, :3, P] == M).any()  # synthesizer never skips
  assert (acts[:, :, 3] == M).all()  # padded role: skip everywhere
  lp = sel.log_probs(logits, mask.valid, 1.3)
  np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(-1), 1.0, atol=1e-6)
  assert np.all(np.exp(np.asarray(lp))[~np.asarray(mask.valid)] == 0.0)
  # Padded roles contribute nothing.
  np.testing.assert_allclose(sel.log_prob(logits, mask.valid, actions[0], 1.3)[:, 3], 0.0, atol=1e-6)
  np.testing.assert_allclose(sel.entropy(logits, mask.valid, 1.3)[:, 3], 0.0, atol=1e-6)


def test_mask_with_no_option_is_an_error():
  with pytest.raises(ValueError, match="no allowed option"):
    sel.SelectionMask.build(1, 1, 1, 2, model_allowed=[False, False], synthesizer_may_skip=False)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("sampler", [sel.sample, sel.sample_gumbel])
def test_sampling_frequencies_match_softmax_at_temperature(temperature, sampler):
  # One position with fixed logits; 40k draws. The std of a frequency is <= 0.0025,
  # so 0.01 (4 sigma) is the tolerance.
  logits = jnp.array([[[[2.0, 0.5, -1.0, 0.0, 1.0, -0.5]]]])
  valid = jnp.ones_like(logits, bool).at[..., 2].set(False)
  draws = jax.vmap(lambda k: sampler(k, logits, valid, temperature))(jax.random.split(jax.random.key(42), 40_000))
  freq = np.bincount(np.asarray(draws).reshape(-1), minlength=6) / 40_000
  expected = np.exp(np.asarray(sel.log_probs(logits, valid, temperature))).reshape(-1)
  target = np.where(np.asarray(valid).reshape(-1), np.exp(np.asarray(logits).reshape(-1) / temperature), 0)
  np.testing.assert_allclose(expected, target / target.sum(), atol=1e-6)
  np.testing.assert_allclose(freq, expected, atol=0.01)


def test_entropy_and_argmax(model_and_inputs):
  model, qr, opts = model_and_inputs
  logits = model(qr, opts)
  mask = sel.SelectionMask.build(B, R, P, M)
  ent = sel.entropy(logits, mask.valid, 1.0)
  assert np.all(np.asarray(ent) > 0) and np.all(np.asarray(ent) <= np.log(M + 1) + 1e-5)
  hot = sel.entropy(logits, mask.valid, 100.0)
  np.testing.assert_allclose(hot, np.log(M + 1), atol=1e-3)  # high T -> uniform
  best = sel.argmax(logits, mask.valid)
  np.testing.assert_array_equal(best, np.argmax(np.asarray(logits), -1))


@pytest.mark.slow  # 6-10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_gradients_are_finite_with_masks(model_and_inputs):
  model, qr, opts = model_and_inputs
  mask = sel.SelectionMask.build(B, R, P, M, model_allowed=[True, False, True, True, True],
                                 role_active=[True, True, False, True])
  actions = sel.argmax(model(qr, opts), mask.valid)
  graphdef, params = nnx.split(model)

  def loss(p):
    logits = nnx.merge(graphdef, p)(qr, opts)
    return -(sel.log_prob(logits, mask.valid, actions, 0.7).sum() + 0.1 * sel.entropy(logits, mask.valid, 0.7).sum())

  grads = jax.grad(loss)(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_jitted_logits_do_not_retrace_on_new_values(model_and_inputs):
  model, qr, opts = model_and_inputs
  graphdef, params = nnx.split(model)
  counted = chex.assert_max_traces(sel.selector_logits.__wrapped__, n=1)
  fn = jax.jit(counted, static_argnames=("graphdef",))
  fn(graphdef, params, qr, opts)
  fn(graphdef, params, qr + 1.0, opts * 2.0)  # new values, same shapes: no retrace


def test_actions_to_assignment():
  acts = np.array([[[0, 2, 1], [2, 2, 2]]])
  names = ["a", "b"]
  assert sel.actions_to_assignment(acts, names) == [[["a", None, "b"], [None, None, None]]]


@pytest.mark.parametrize("skip_head", ["gate", "shared"])
def test_both_skip_heads_give_finite_logits_and_gradients(skip_head):
  model = sel.LLMSelector(P, D, D, hidden_dim=32, skip_head=skip_head, input_scale=skip_head == "gate",
                          rngs=nnx.Rngs(0))
  qr = jax.random.normal(jax.random.key(1), (B, R, D))
  opts = jax.random.normal(jax.random.key(2), (M + 1, D))
  graphdef, state = nnx.split(model)

  def loss(state):
    return nnx.merge(graphdef, state)(qr, opts)[..., -1].sum()

  grads = jax.grad(loss)(state)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  assert model(qr, opts).shape == (B, R, P + 1, M + 1)


def test_skip_gate_keeps_p_skip_independent_of_the_model_logits():
  model = sel.LLMSelector(P, D, D, hidden_dim=32, init_skip_bias=0.7, skip_head="gate", rngs=nnx.Rngs(0))
  qr = jax.random.normal(jax.random.key(1), (B, R, D))
  opts = jax.random.normal(jax.random.key(2), (M + 1, D))
  valid = sel.SelectionMask.build(B, R, P, M).valid
  p_skip = lambda: np.exp(np.asarray(sel.log_probs(model(qr, opts), valid))[..., -1])  # noqa: E731
  # Zero-initialised gate: p(skip) = sigmoid(init_skip_bias) at every position, for every query.
  np.testing.assert_allclose(p_skip(), 1 / (1 + np.exp(-0.7)), rtol=1e-5)
  # Changing which model is preferred leaves p(skip) where it was.
  model.option_bias.bias[...] = jnp.full((1,), 5.0)
  model.option_key.kernel[...] = 3.0 * model.option_key.kernel[...]
  np.testing.assert_allclose(p_skip(), 1 / (1 + np.exp(-0.7)), rtol=1e-5)
  # The gate itself depends on the query and the role.
  model.gate_out[...] = jax.random.normal(jax.random.key(3), model.gate_out.shape)
  assert np.std(p_skip()) > 1e-3


def test_unknown_skip_head_is_an_error():
  with pytest.raises(ValueError, match="skip_head 'both' is not known"):
    sel.LLMSelector(P, D, D, skip_head="both", rngs=nnx.Rngs(0))


def test_module_defaults_are_the_config_defaults():
  # One default per hyperparameter: a selector built without arguments is the one the configs train.
  params = inspect.signature(sel.LLMSelector.__init__).parameters
  section = config_lib.selector_section()
  for name in ("hidden_dim", "init_skip_bias", "skip_head", "input_scale"):
    assert params[name].default == section[name], name

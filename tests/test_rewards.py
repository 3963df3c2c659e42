"""Cost-aware reward, multi-level credit, baselines, temperature schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hieramas_jax import rewards


def test_output_reward_matches_published_formula():
  cost = jnp.array([0.0, 0.001, 0.01, 0.0, 0.001, 0.01])
  solved = jnp.array([True, True, True, False, False, False])
  got = rewards.output_reward(solved, cost, 300.0, 300.0)
  want = [1.0, max(np.exp(-0.3), 0.5), 0.5, -1.0, -np.exp(0.3), -2.5]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_multilevel_credit():
  node_solved = jnp.array([[True, False, True]])
  node_cost = jnp.zeros((1, 3))
  gives = jnp.array([False, True, True])
  ran = jnp.array([[True, True, False]])
  r = rewards.multilevel_reward(node_solved, node_cost, jnp.array([True]), jnp.array([0.0]), gives, ran, alpha=0.5)
  # role 0: no answer -> system (1.0); role 1: 0.5 * (-1) + 0.5 * 1 = 0; role 2 skipped -> 0
  np.testing.assert_allclose(r, [[1.0, 0.0, 0.0]])
  r0 = rewards.multilevel_reward(node_solved, node_cost, jnp.array([True]), jnp.array([0.0]), gives, ran, alpha=0.0)
  np.testing.assert_allclose(r0, [[1.0, 1.0, 0.0]])
  with pytest.raises(ValueError, match="alpha"):
    rewards.multilevel_reward(node_solved, node_cost, jnp.array([True]), jnp.array([0.0]), gives, ran, alpha=1.5)


def test_cosine_temperature_goes_from_start_to_end_monotonically():
  t = np.array([rewards.cosine_temperature(s, 11, 2.0, 0.5) for s in range(11)])
  np.testing.assert_allclose([t[0], t[-1]], [2.0, 0.5], rtol=1e-6)
  assert np.all(np.diff(t) < 0)


def test_baselines_and_advantages():
  r = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
  w = jnp.array([[1, 1], [1, 1], [1, 0]])
  b = rewards.batch_mean_baseline(r, w)
  np.testing.assert_allclose(b, [[4.0, 4.0], [3.0, 2.0], [2.0, 3.0]])
  adv = rewards.advantages(r, w, b)
  np.testing.assert_allclose(adv, [[-3.0, -2.0], [0.0, 2.0], [3.0, 0.0]])
  g = jax.grad(lambda x: rewards.advantages(x, w, b).sum())(r)
  np.testing.assert_array_equal(g, 0.0)  # stop_gradient
  ema = rewards.ema_update(jnp.zeros(2), r, w, decay=0.5)
  np.testing.assert_allclose(ema, [1.5, 1.5])


def test_roc_auc():
  from hieramas_jax.train import metrics
  assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
  assert metrics.roc_auc([1, 1, 1], [0, 1, 1]) == 0.5  # ties count half
  assert np.isnan(metrics.roc_auc([1, 2], [1, 1]))
  mean, n = metrics.mean_per_query_auc([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]], [[0, 1], [0, 1], [1, 1]])
  assert (mean, n) == (0.5, 2)


def test_group_baseline_is_leave_one_out_within_each_query():
  r = jnp.array([[1.0], [3.0], [10.0], [20.0]])
  w = jnp.ones_like(r)
  np.testing.assert_allclose(rewards.group_baseline(r, w, 2), [[3.0], [1.0], [20.0], [10.0]])
  with pytest.raises(ValueError, match="groups of 3"):
    rewards.group_baseline(r, w, 3)


def test_run_skip_advantages_count_skipped_rows_against_the_same_query():
  # Two queries of two samples each; every row of a valid query counts, whatever the role did.
  decision = jnp.array([[1.0, 0.5], [-1.0, 0.5], [0.2, 2.0], [0.4, 0.0]])
  valid = jnp.array([True, True, True, False])
  adv = rewards.run_skip_advantages(decision, valid, "loo", group_size=2)
  # Query 0: leave-one-out within the pair. Query 1: its only valid row has no other to compare with (0 baseline).
  np.testing.assert_allclose(adv, [[2.0, 0.0], [-2.0, 0.0], [0.2, 2.0], [0.0, 0.0]])
  np.testing.assert_allclose(rewards.run_skip_advantages(decision, valid, "none"),
                             [[1.0, 0.5], [-1.0, 0.5], [0.2, 2.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match="'loo' or 'none'"):
    rewards.run_skip_advantages(decision, valid, "ema")


@pytest.mark.parametrize("c_s, c_f", [(300.0, 300.0), (100.0, 50.0), (1.0, 300.0)])
def test_training_and_oracle_rewards_agree_on_a_grid(c_s, c_f):
  from hieramas_jax import reward_formula
  from hieramas_jax.llm import sim
  costs = np.concatenate([[0.0], np.geomspace(1e-6, 1e4, 60)])  # up to far past both floors (no overflow)
  solved = np.repeat([False, True], costs.size)
  cost = np.tile(costs, 2)
  training = jax.jit(rewards.output_reward, static_argnums=(2, 3))(jnp.asarray(solved), jnp.asarray(cost), c_s, c_f)
  oracle = np.array([sim.reward_of(s, c, c_s, c_f) for s, c in zip(solved, cost)])
  np.testing.assert_allclose(training, oracle, rtol=2e-6, atol=1e-7)
  # Both floors are reached at high cost, and nothing else lies outside them.
  assert oracle[costs.size - 1] == -2.5 and oracle[-1] == 0.5
  assert np.all((oracle >= 0.5) | (oracle <= -1.0)) and oracle.min() == -2.5
  with np.errstate(over="raise", invalid="raise"):
    on_numpy = reward_formula.cost_aware_reward(solved.astype(float), cost, c_s, c_f, xp=np)
  np.testing.assert_allclose(on_numpy, oracle, rtol=1e-12)
  # A solve probability gives the expected reward.
  for c in (0.0, 0.002, 0.05):
    want = 0.3 * sim.reward_of(True, c, c_s, c_f) + 0.7 * sim.reward_of(False, c, c_s, c_f)
    assert sim.reward_of(0.3, c, c_s, c_f) == pytest.approx(want, rel=1e-12)

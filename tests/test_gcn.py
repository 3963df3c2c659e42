"""Graph classifier: the fast (blocked, factored) path equals the per-pair dense and jraph forms, no retracing."""

import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hieramas_jax import graphs
from hieramas_jax.models import gcn, gcn_fast, gcn_scoring

B, K, N, D = 3, 6, 5, 24
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
  model = gcn.GraphClassifier(N, D, role_dim=8, hidden_dim=16, num_layers=2, mlp_dim=16, rngs=nnx.Rngs(0))
  q = jax.random.normal(jax.random.key(1), (B, D))
  pool = jnp.asarray(graphs.dag_pool(0, N, K, (0.2, 0.9)), jnp.float32)
  return model, q, pool


def _random_dags(seed: int, shape: tuple[int, ...], num_roles: int) -> jnp.ndarray:
  rng = np.random.default_rng(seed)
  count = int(np.prod(shape))
  return jnp.asarray(np.stack([graphs.random_dag(rng, num_roles) for _ in range(count)]).reshape(
      *shape, num_roles, num_roles), jnp.float32)


def _scores(model, q, adjs, role_mask=None, impl="dense"):
  """Jitted scores; a fresh jit each call, so a monkeypatched PAIRS_PER_BLOCK is traced, never a cached block."""
  graphdef, params = nnx.split(model)
  return jax.jit(lambda p, q, a, m: nnx.merge(graphdef, p)(q, a, m, impl=impl))(params, q, adjs, role_mask)


def _assert_all_forms_agree(model, q, adjs, role_mask=None, atol=1e-5):
  fast = _scores(model, q, adjs, role_mask)
  np.testing.assert_allclose(fast, _scores(model, q, adjs, role_mask, "dense_per_pair"), atol=atol, rtol=0)
  np.testing.assert_allclose(fast, _scores(model, q, adjs, role_mask, "segment"), atol=atol, rtol=0)
  return fast


def test_segment_and_dense_layers_agree():
  x = jax.random.normal(jax.random.key(0), (N, 7))
  for adj in graphs.dag_pool(1, N, 10):
    for mask in (jnp.ones(N), jnp.array([1, 1, 1, 0, 1.0])):
      a = jnp.asarray(adj, jnp.float32) * mask[:, None] * mask[None, :]
      np.testing.assert_allclose(gcn.aggregate(x, a, mask, "segment"), gcn.aggregate(x, a, mask, "dense"),
                                 atol=1e-5)


def test_aggregation_follows_edge_direction():
  # chain 0 -> 1: role 1 receives role 0's features; role 0 receives nothing from 1.
  x = jnp.array([[1.0], [10.0]])
  out = gcn.aggregate(x, jnp.array([[0, 1], [0, 0]], jnp.float32), jnp.ones(2), "segment")
  # out_deg(A+I) = [2, 1], in_deg = [1, 2]
  np.testing.assert_allclose(out[0], 1.0 / np.sqrt(2) * 1.0, rtol=1e-6)
  np.testing.assert_allclose(out[1], (1.0 / np.sqrt(2)) * (1.0 / np.sqrt(2) * 1.0 + 10.0), rtol=1e-6)


def test_normalized_adjacency_is_the_per_pair_aggregation():
  x = jax.random.normal(jax.random.key(3), (N, 4))
  mask = jnp.array([1, 1, 0, 1, 1.0])
  for adj in graphs.dag_pool(2, N, 6):
    a = jnp.asarray(adj, jnp.float32) * mask[:, None] * mask[None, :]
    s = gcn.normalized_adjacency(a, mask)
    np.testing.assert_allclose(s.T @ x, gcn.aggregate(x, a, mask, "dense"), atol=1e-6)


def test_full_model_forms_agree(setup):
  model, q, pool = setup
  _assert_all_forms_agree(model, q, pool)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("pairs_per_block", [1, 7, 10_000])  # one pair per block, padded blocks, one block
def test_fast_path_equals_reference_over_layers_and_blocks(monkeypatch, num_layers, pairs_per_block):
  monkeypatch.setattr(gcn_fast, "default_pairs_per_block", lambda: pairs_per_block)
  model = gcn.GraphClassifier(N, D, role_dim=8, hidden_dim=16, num_layers=num_layers, mlp_dim=16,
                              rngs=nnx.Rngs(num_layers))
  q = jax.random.normal(jax.random.key(4), (4, D))
  shared = _random_dags(0, (11,), N)
  _assert_all_forms_agree(model, q, shared)
  _assert_all_forms_agree(model, q, _random_dags(1, (4, 11), N))  # per-query pools


def test_per_query_role_masks_and_padding(monkeypatch):
  monkeypatch.setattr(gcn_fast, "default_pairs_per_block", lambda: 9)
  model = gcn.GraphClassifier(N + 2, D, role_dim=8, hidden_dim=16, rngs=nnx.Rngs(5))
  q = jax.random.normal(jax.random.key(6), (4, D))
  masks = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0.0]])
  pool = _random_dags(7, (4, 10), N + 2) * masks[:, None, :, None] * masks[:, None, None, :]
  _assert_all_forms_agree(model, q, pool, masks)
  shared_pool = _random_dags(8, (10,), N + 2) * masks[0][:, None] * masks[0][None, :]
  _assert_all_forms_agree(model, q, shared_pool, masks[0])  # one mask for all queries
  _assert_all_forms_agree(model, q, shared_pool, jnp.broadcast_to(masks[0], (4, N + 2)))  # the same, per query


def test_paper_sizes_match_the_reference_within_1e_5(monkeypatch):
  """B=64 queries x K=200 candidates of 8 roles, D=1024, several blocks: the issue's workload."""
  monkeypatch.setattr(gcn_fast, "default_pairs_per_block", lambda: gcn.PAIRS_PER_BLOCK)  # a CPU's blocks anywhere
  model = gcn.GraphClassifier(8, 1024, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  q = jax.random.normal(jax.random.key(2), (64, 1024))
  pool = jnp.asarray(graphs.dag_pool(0, 8, 200, (0.2, 0.8)), jnp.float32)
  assert gcn.block_layout(200, 64)[0] > 1
  fast = gcn.score_pool(graphdef, params, q, pool)
  np.testing.assert_allclose(fast, gcn.score_pool(graphdef, params, q, pool, impl="dense_per_pair"), atol=1e-5,
                             rtol=0)
  np.testing.assert_allclose(fast, gcn.score_pool(graphdef, params, q, pool, impl="segment"), atol=1e-5, rtol=0)


def test_gradients_of_the_fast_path_equal_the_reference(monkeypatch):
  """Stage 2 trains through the fast path: its gradients are the per-pair form's."""
  monkeypatch.setattr(gcn_fast, "default_pairs_per_block", lambda: 10)  # several blocks under lax.map
  model = gcn.GraphClassifier(N, D, role_dim=8, hidden_dim=16, mlp_dim=16, rngs=nnx.Rngs(9))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  q = jax.random.normal(jax.random.key(10), (4, D))
  adjs = _random_dags(11, (4, 7), N)
  weights = jax.random.normal(jax.random.key(12), (4, 7))

  def loss(p, impl):
    return jnp.sum(jnp.tanh(nnx.merge(graphdef, p)(q, adjs, impl=impl)) * weights)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  fast, want = grad(params, "dense"), grad(params, "dense_per_pair")
  for got, ref in zip(jax.tree.leaves(fast), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, float(jnp.abs(ref).max())), rtol=0)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(fast)) > 0


def test_vmapped_scores_equal_per_graph_loop(setup):
  model, q, pool = setup
  graphdef, params = nnx.split(model)
  batched = gcn.score_pool(graphdef, params, q, pool)
  assert batched.shape == (B, K)
  loop = np.array([[gcn.score_single(graphdef, params, q[b], pool[k]) for k in range(K)] for b in range(B)])
  np.testing.assert_allclose(batched, loop, atol=1e-5)
  # Per-query pools [B, K, N, N] give the same as a shared pool.
  per_query = gcn.score_pool(graphdef, params, q, jnp.broadcast_to(pool, (B, K, N, N)))
  np.testing.assert_allclose(per_query, batched, atol=1e-6)


def test_padded_roles_do_not_change_scores():
  model = gcn.GraphClassifier(N + 2, D, role_dim=8, hidden_dim=16, rngs=nnx.Rngs(3))
  q = jax.random.normal(jax.random.key(1), (2, D))
  pool = graphs.dag_pool(4, N, 4)
  padded = jnp.asarray(graphs.pad_adjacency(pool, N + 2), jnp.float32)
  mask = jnp.array([1.0] * N + [0.0, 0.0])
  base = {impl: _scores(model, q, padded, mask, impl) for impl in gcn.IMPLEMENTATIONS}
  # Different padded-role embeddings must not matter.
  model.role_embed[...] = model.role_embed[...].at[N:].set(5.0)
  for impl in gcn.IMPLEMENTATIONS:
    np.testing.assert_allclose(_scores(model, q, padded, mask, impl), base[impl], atol=1e-6)


def test_scores_depend_on_graph_and_query(setup):
  model, q, pool = setup
  s = np.asarray(_scores(model, q, pool))
  assert np.ptp(s, axis=1).min() > 0  # candidates differ
  assert np.ptp(s, axis=0).max() > 0  # queries differ


def test_block_layout_covers_the_pool_with_little_padding():
  for k in (1, 7, 50, 200, 1000, 4099):
    for b in (1, 8, 64, 256, 5000):
      blocks, per_block = gcn.block_layout(k, b, gcn.PAIRS_PER_BLOCK)
      assert blocks * per_block >= k and blocks * per_block - k < blocks  # less than one graph per block padded
      assert per_block == 1 or per_block * b <= 2 * gcn.PAIRS_PER_BLOCK
  assert gcn.block_layout(200, 64, gcn.PAIRS_PER_BLOCK) == (8, 25)
  assert gcn.block_layout(200, 1, gcn.PAIRS_PER_BLOCK) == (1, 200)
  on_cpu = jax.default_backend() == "cpu"
  assert gcn_fast.default_pairs_per_block() == (gcn.PAIRS_PER_BLOCK if on_cpu else gcn_fast.ACCELERATOR_PAIRS_PER_BLOCK)


def test_scratch_memory_stays_bounded_as_the_pool_grows(monkeypatch):
  """Working memory is a few blocks' worth, not B x K x N x H: no fresh large buffer per call."""
  monkeypatch.setattr(gcn_fast, "default_pairs_per_block", lambda: gcn.PAIRS_PER_BLOCK)  # a CPU's blocks anywhere
  model = gcn.GraphClassifier(8, 64, hidden_dim=64, rngs=nnx.Rngs(0))  # H=64: block_bytes below
  graphdef, params = nnx.split(model)
  q = jnp.zeros((64, 64))
  temp = {}
  for k in (200, 2000):
    compiled = gcn.pool_scorer(graphdef).lower(params, q, jnp.zeros((k, 8, 8))).compile()
    temp[k] = compiled.memory_analysis().temp_size_in_bytes
  block_bytes = gcn.PAIRS_PER_BLOCK * 8 * 64 * 4  # one [G, N, B, H] activation of a block
  assert temp[2000] < 4 * block_bytes, temp
  assert temp[2000] < 1.5 * temp[200], temp


def test_no_retrace_on_new_values(setup, monkeypatch):
  """score_pool traces once per shape through its cached PoolScorer, never for new values."""
  model, q, pool = setup
  graphdef, params = nnx.split(model)  # a graphdef object score_pool has not seen: a fresh PoolScorer
  monkeypatch.setattr(gcn_scoring, "HOST_MAX_PAIRS", 0)  # every call on XLA: the traced pieces below
  monkeypatch.setenv("HIERAMAS_NATIVE_SCORING", "0")
  for module, name in ((gcn_scoring, "_score_merged"), (gcn_scoring, "_scoring_tensors"),
                       (gcn_fast, "prepare_shared_pool"), (gcn_fast, "score_shared_pool")):
    monkeypatch.setattr(module, name, chex.assert_max_traces(getattr(module, name), n=1))
  gcn.score_pool(graphdef, params, q, pool)
  new_pool = jnp.asarray(graphs.dag_pool(9, N, K), jnp.float32)
  gcn.score_pool(graphdef, params, q * 3.0, new_pool)
  gcn.score_pool(graphdef, jax.tree.map(lambda x: x * 2.0, params), q, new_pool)  # new parameters
  per_query = jnp.broadcast_to(pool, (B, K, N, N))  # per-query pools: the whole computation, traced once
  gcn.score_pool(graphdef, params, q, per_query)
  gcn.score_pool(graphdef, jax.tree.map(lambda x: x * 0.5, params), q + 1.0, per_query[:, ::-1])
  assert gcn.pool_scorer(graphdef) is gcn.pool_scorer(graphdef)


def test_score_pool_hashes_no_graphdef_per_call(setup, monkeypatch):
  """The per-call cost cut: a graphdef is looked up by identity, never hashed (a static jit argument was)."""
  model, q, pool = setup
  graphdef, params = nnx.split(model)
  jax.block_until_ready(gcn.score_pool(graphdef, params, q, pool))  # compiled and cached
  hashes = []
  graphdef_type = type(graphdef)
  original_hash = graphdef_type.__hash__
  monkeypatch.setattr(graphdef_type, "__hash__", lambda self: hashes.append(1) or original_hash(self))
  for _ in range(3):
    jax.block_until_ready(gcn.score_pool(graphdef, params, q, pool))
  assert not hashes
  static = jax.jit(gcn_scoring._score_merged, static_argnames=("graphdef", "impl"))  # how score_pool was jitted before
  static(graphdef, params, q, pool, None, impl="dense")
  assert hashes  # the check above can fail: a static graphdef is hashed per call


# Every call on XLA; every call on the host in NumPy; every call in the C kernel.
@pytest.mark.parametrize("host_max_pairs,native", [(0, False), (10**9, False), (0, True)])
def test_prepared_pools_are_cached_by_value_and_give_the_model_scores(setup, host_max_pairs, native):
  """A shared pool is prepared once per (parameters, pool, mask); new values of any of them are prepared again."""
  model, q, pool = setup
  graphdef, params = nnx.split(model)
  scorer = gcn.PoolScorer(graphdef, host_max_pairs=host_max_pairs, native=native)
  prepared = []
  original = scorer._prepare
  scorer._prepare = lambda *args: prepared.append(1) or original(*args)
  reference = lambda p, a, m=None: np.asarray(_scores(nnx.merge(graphdef, p), q, jnp.asarray(a, jnp.float32), m))
  for _ in range(3):
    np.testing.assert_allclose(scorer(params, q, pool), reference(params, pool), atol=1e-6, rtol=0)
    np.testing.assert_allclose(scorer(params, q[:1], pool), reference(params, pool)[:1], atol=1e-6, rtol=0)
  assert len(prepared) == 1  # one pool, one block layout (B=1 and B=3 share it here)
  mask = jnp.array([1, 1, 0, 1, 1.0])
  masked = pool * mask[:, None] * mask[None, :]
  np.testing.assert_allclose(scorer(params, q, masked, mask), reference(params, masked, mask), atol=1e-6, rtol=0)
  halved = jax.tree.map(lambda x: x * 0.5, params)  # new parameter values: new tensors and pool terms
  np.testing.assert_allclose(scorer(halved, q, pool), reference(halved, pool), atol=1e-6, rtol=0)
  assert len(prepared) == 3
  # A NumPy pool is keyed by content: changed in place, it is prepared again.
  host_pool = np.array(pool)
  np.testing.assert_allclose(scorer(params, q, host_pool), reference(params, host_pool), atol=1e-6, rtol=0)
  host_pool[:, 0, :] = 0.0
  np.testing.assert_allclose(scorer(params, q, host_pool), reference(params, host_pool), atol=1e-6, rtol=0)
  assert len(prepared) == 5
  # Bounded: the oldest prepared pools go.
  for seed in range(gcn.PoolScorer.MAX_POOLS + 2):
    scorer(params, q, _random_dags(seed, (K,), N))
  assert len(scorer._pools) == gcn.PoolScorer.MAX_POOLS


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the host paths run on a CPU backend only")
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_host_path_equals_the_xla_fast_path(num_layers):
  """Small calls scored in NumPy on the caller's thread give the XLA path's scores within 1e-5, masks included."""
  model = gcn.GraphClassifier(8, 1024, num_layers=num_layers, rngs=nnx.Rngs(num_layers))
  graphdef, params = nnx.split(model)
  host = gcn.PoolScorer(graphdef, host_max_pairs=10**9, native=False)
  device = gcn.PoolScorer(graphdef, host_max_pairs=0, native=False)
  pool = jnp.asarray(graphs.dag_pool(0, 8, 200, (0.2, 0.8)), jnp.float32)
  mask = jnp.array([1, 1, 1, 0, 1, 1, 0, 1.0])
  for batch, k, role_mask in ((1, 1, None), (1, 50, None), (3, 200, None), (2, 37, mask)):
    q = jax.random.normal(jax.random.key(batch * k), (batch, 1024))
    adjs = pool[:k] if role_mask is None else pool[:k] * role_mask[:, None] * role_mask[None, :]
    got, want = host(params, q, adjs, role_mask), device(params, q, adjs, role_mask)
    assert isinstance(got, np.ndarray) and isinstance(want, jax.Array) and got.shape == (batch, k)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(host(params, np.asarray(q), np.asarray(adjs), role_mask), want, atol=1e-5, rtol=0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the host paths run on a CPU backend only")
def test_score_pool_takes_the_host_path_up_to_host_max_pairs(setup, monkeypatch):
  """The default scorer runs calls of at most HOST_MAX_PAIRS pairs on the host, larger ones on XLA."""
  model, _, _ = setup
  monkeypatch.setattr(gcn_scoring, "HOST_MAX_PAIRS", 12)
  monkeypatch.setenv("HIERAMAS_NATIVE_SCORING", "0")  # no C kernel: the NumPy host path and XLA
  graphdef, params = nnx.split(model)  # a fresh graphdef: a scorer built under the patched bound
  q = jax.random.normal(jax.random.key(5), (3, D))
  pool = _random_dags(5, (5,), N)
  small, large = gcn.score_pool(graphdef, params, q[:2], pool[:5]), gcn.score_pool(graphdef, params, q, pool)
  assert isinstance(small, np.ndarray) and isinstance(large, jax.Array)
  np.testing.assert_allclose(small, large[:2], atol=1e-5, rtol=0)
  per_query = jnp.broadcast_to(pool, (2, 5, N, N))  # per-query pools are never cached: always XLA
  assert isinstance(gcn.score_pool(graphdef, params, q[:2], per_query), jax.Array)


def test_pool_scorer_under_jit_and_with_numpy_parameters_computes_without_caching(setup):
  """Tracers and NumPy parameter leaves cannot be keyed: the whole computation runs, with the same scores."""
  model, q, pool = setup
  graphdef, params = nnx.split(model)
  scorer = gcn.PoolScorer(graphdef)
  want = np.asarray(scorer(params, q, pool))
  traced = jax.jit(lambda p, x, a: scorer(p, x, a))(params, q, pool)
  np.testing.assert_allclose(traced, want, atol=1e-6, rtol=0)
  host_params = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
  np.testing.assert_allclose(scorer(host_params, q, pool), want, atol=1e-6, rtol=0)
  assert scorer.prepared_pool(host_params, pool, None, B) == (None, None)
  with pytest.raises(ValueError, match="pad smaller graphs"):  # wrong shapes keep the model's errors
    scorer(params, q, jnp.zeros((2, N - 1, N - 1)))


def test_pool_scorer_cache_is_bounded_and_keyed_by_identity(setup, monkeypatch):
  model, q, pool = setup
  monkeypatch.setattr(gcn_scoring, "_SCORERS", {})
  graphdefs = [nnx.split(model)[0] for _ in range(gcn_scoring._MAX_SCORERS + 3)]
  scorers = [gcn.pool_scorer(g) for g in graphdefs]
  assert len(gcn_scoring._SCORERS) == gcn_scoring._MAX_SCORERS
  assert gcn.pool_scorer(graphdefs[-1]) is scorers[-1]
  assert gcn.pool_scorer(graphdefs[0]) is not scorers[0]  # evicted (oldest first), built again
  assert gcn.pool_scorer(graphdefs[-1], "segment") is not scorers[-1]
  with pytest.raises(ValueError, match="unknown GCN implementation 'sparse'"):
    gcn.PoolScorer(graphdefs[0], "sparse")


def test_training_impl_rule():
  assert gcn.training_impl("dense", 32, 32, 3) == "dense_per_pair"  # MATH's stage 2: 3 roles, 32 x 32 pairs
  assert gcn.training_impl("dense", 32, 32, 8) == "dense"  # MMLU-Redux's: 8 roles
  assert gcn.training_impl("dense", 64, 64, 3) == "dense"  # past the pair bound
  assert gcn.training_impl("segment", 32, 32, 3) == "segment"
  with pytest.raises(ValueError, match="unknown GCN implementation"):
    gcn.training_impl("sparse", 32, 32, 3)


@pytest.mark.parametrize("num_roles", [3, 8])
def test_training_path_loss_and_grads_equal_the_scoring_path(num_roles):
  """Stage 2's gradient step (training_impl's form) gives the scoring path's loss and gradients within 1e-5."""
  from hieramas_jax.train import learner  # pylint: disable=g-import-not-at-top
  batch, per_query = 6, 9
  model = gcn.GraphClassifier(num_roles, D, role_dim=8, hidden_dim=16, mlp_dim=16, rngs=nnx.Rngs(num_roles))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(num_roles)
  cb = learner.ClassifierBatch(jax.random.normal(jax.random.key(13), (batch, D)),
                               _random_dags(14, (batch, per_query), num_roles),
                               jnp.asarray(rng.integers(0, 2, (batch, per_query)), jnp.float32),
                               jnp.asarray(rng.random((batch, per_query)) > 0.2, jnp.float32),
                               jnp.ones((num_roles,), jnp.float32))
  step_impl = gcn.training_impl("dense", batch, per_query, num_roles)
  assert step_impl == ("dense_per_pair" if num_roles <= 3 else "dense")
  loss_and_grad = jax.jit(jax.value_and_grad(learner.classifier_loss), static_argnums=(1, 4))
  trained = loss_and_grad(params, graphdef, cb, 2.5, step_impl)
  scored = loss_and_grad(params, graphdef, cb, 2.5, "dense")
  reference = loss_and_grad(params, graphdef, cb, 2.5, "dense_per_pair")
  for got in (trained, scored):
    for leaf, ref in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
      np.testing.assert_allclose(leaf, ref, atol=1e-5 * max(1.0, float(jnp.abs(ref).max())), rtol=0)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(trained[1])) > 0


def test_wrong_inputs_are_errors(setup):
  model, q, pool = setup
  with pytest.raises(ValueError, match="pad smaller graphs"):
    model(q, jnp.zeros((2, N - 1, N - 1)))
  with pytest.raises(ValueError, match=r"per-query adjacency stack has shape \(2, 6, 5, 5\) for 3 queries"):
    model(q, jnp.zeros((2, K, N, N)))
  with pytest.raises(ValueError, match=r"role_mask has shape \(4,\); expected \[5\] or \[3, 5\]"):
    model(q, pool, jnp.ones(4))
  with pytest.raises(ValueError, match="unknown GCN implementation 'sparse'"):
    model(q, pool, impl="sparse")


_EIGHT_DEVICES = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from hieramas_jax import graphs, system
    from hieramas_jax.models import gcn, gcn_fast, gcn_scoring
    assert jax.device_count() == 8, jax.devices()
    model = gcn.GraphClassifier(8, 64, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(16, 64)).astype(np.float32)
    pool = graphs.dag_pool(0, 8, 203, (0.2, 0.8))
    per_query = pool[rng.integers(0, len(pool), (16, 40))]
    out = {}
    for name, adjs in (("shared", pool), ("per_query", per_query)):
      reference = np.asarray(gcn.score_pool(graphdef, params, jnp.asarray(q), jnp.asarray(adjs, jnp.float32),
                                            impl="dense_per_pair"))
      sharded = system.ShardedGraphScorer(graphdef, params)(q, adjs)
      one = system.ShardedGraphScorer(graphdef, params, devices=jax.devices()[:1])(q, adjs)
      assert np.array_equal(sharded, one), name
      assert np.abs(sharded - reference).max() <= 1e-5, (name, np.abs(sharded - reference).max())
      out[name] = sharded
    # A query sharded over the 8 devices has no single buffer: the C kernel (score_pool on a CPU) reads a copy.
    mesh = jax.make_mesh((8,), ("d",))
    spread = jax.device_put(jnp.asarray(q), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
    shared = jnp.asarray(pool, jnp.float32)
    plain = np.asarray(gcn.score_pool(graphdef, params, jnp.asarray(q), shared))
    for _ in range(2):
      assert np.abs(np.asarray(gcn.score_pool(graphdef, params, spread, shared)) - plain).max() <= 1e-6
    np.savez(sys.argv[1], **out)
""")


def test_sharded_fast_path_on_8_devices_equals_reference_and_1_device(tmp_path):
  """On 8 host devices the sharded scorer (fast path) equals the per-pair reference within 1e-5 and 1 device."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path / "scores.npz")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  from hieramas_jax import system  # pylint: disable=g-import-not-at-top
  model = gcn.GraphClassifier(8, 64, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(0)
  q = rng.normal(size=(16, 64)).astype(np.float32)
  pool = graphs.dag_pool(0, 8, 203, (0.2, 0.8))
  per_query = pool[rng.integers(0, len(pool), (16, 40))]
  with np.load(tmp_path / "scores.npz") as eight:
    for name, adjs in (("shared", pool), ("per_query", per_query)):
      here = system.ShardedGraphScorer(graphdef, params)(q, adjs)
      if jax.default_backend() == "cpu":  # the same computation on 1 CPU device as on 8: the same bits
        np.testing.assert_array_equal(here, eight[name])
      else:  # this process on an accelerator, the 8 devices on the CPU: within 1e-5
        np.testing.assert_allclose(here, eight[name], atol=1e-5, rtol=0)


def test_sharded_scorer_prepares_a_shared_pool_once_and_scores_as_before():
  """HieraMAS.plan's path: a shared pool is prepared on the first call and reused for new queries; the scores are
  those of the uncached per-block computation, bit for bit, and the per-pair reference's within 1e-5."""
  from hieramas_jax import graph_scoring  # pylint: disable=g-import-not-at-top
  model = gcn.GraphClassifier(8, 64, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  scorer = graph_scoring.ShardedGraphScorer(graphdef, params)
  pool = graphs.dag_pool(0, 8, 203, (0.2, 0.8)).astype(np.int8)
  rng = np.random.default_rng(0)
  for _ in range(3):
    q = rng.normal(size=(2, 64)).astype(np.float32)
    got = scorer(q, pool)
    block = scorer.block_size(len(pool), 2)
    stack = np.zeros((-(-len(pool) // block) * block, 8, 8), np.int8)
    stack[:len(pool)] = pool
    uncached = np.asarray(scorer._function(block, False)(scorer.params, q, stack))[:, :len(pool)]
    np.testing.assert_array_equal(got, uncached)
    reference = gcn.score_pool(graphdef, params, jnp.asarray(q), jnp.asarray(pool, jnp.float32), impl="dense_per_pair")
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)
  assert len(scorer._pools) == 1
  pool[:, 0, :] = 0  # changed in place: keyed by content, prepared again
  np.testing.assert_allclose(scorer(q, pool), gcn.score_pool(graphdef, params, jnp.asarray(q), jnp.asarray(
      pool, jnp.float32), impl="dense_per_pair"), atol=1e-5, rtol=0)
  assert len(scorer._pools) == 2


def test_module_defaults_are_the_config_defaults():
  # One default per hyperparameter: a classifier built without arguments is the one the configs train.
  import inspect  # pylint: disable=g-import-not-at-top
  from hieramas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  section = config_lib.gcn_section()
  params = inspect.signature(gcn.GraphClassifier.__init__).parameters
  for name in ("role_dim", "hidden_dim", "num_layers", "mlp_dim"):
    assert params[name].default == section[name], name
  for fn in (gcn.aggregate, gcn.GraphClassifier.score_graph, gcn.GraphClassifier.__call__, gcn.score_pool):
    assert inspect.signature(fn).parameters["impl"].default == section.impl, fn.__name__


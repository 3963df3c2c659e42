"""Graph classifier: a GCN that scores candidate role DAGs for a query.

Node features are a trainable role embedding concatenated with the query
embedding. Message passing follows edge direction (``adj[i, j] = 1``: i -> j),
with self-loops and symmetric degree normalisation:

    H' = relu(S^T (H W + b)),   S = D_out^{-1/2} (A + I) D_in^{-1/2}

where D_out / D_in are the out- / in-degrees of A + I (the first layer adds its
bias after the aggregation). After the GCN layers the
active roles are mean-pooled, projected, and an MLP gives one logit per graph.

Three formulations share the parameters and compute the same function (tests
keep them within 1e-5):

- ``dense`` (the default, and the one every caller uses): the blocked and
  factored fast path of ``gcn_fast`` (one normalised adjacency per graph, the
  first layer without per-pair products, [G, N, B, H] blocks of about
  ``PAIRS_PER_BLOCK`` pairs). Gradients flow through this path (stage 2 trains on
  it from 4 roles up). ``score_pool`` (``gcn_scoring``) runs it through a
  ``PoolScorer`` cached per graphdef, which caches a shared pool's parameter and
  pool terms and scores small calls on the host.
- ``dense_per_pair``: the original dense formulation, one (query, graph) pair at
  a time under ``vmap`` (``score_graph``); the reference the fast path is tested
  and benchmarked against, and stage 2's gradient step where it measured faster
  (``training_impl``: 3 roles or fewer, small batches).
- ``segment``: the same per-pair form with jraph segment sums over a static
  all-pairs edge list weighted by the adjacency.

The fast path's functions and the cached scorer live in ``gcn_fast`` and
``gcn_scoring``; the names callers use are re-exported here.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import jraph
from flax import nnx

from hieramas_jax import graphs
from hieramas_jax.models import gcn_fast
# Re-exported: callers score through ``gcn.score_pool`` and read the fast path's layout and FLOP counts here.
from hieramas_jax.models.gcn_fast import IMPLEMENTATIONS, PAIRS_PER_BLOCK, block_layout, \
    fast_path_flops_per_score, normalized_adjacency, prepare_shared_pool, score_shared_pool  # noqa: F401
from hieramas_jax.models.gcn_scoring import HOST_MAX_PAIRS, PoolScorer, pool_scorer, score_pool  # noqa: F401


def _aggregate_segment(graph: jraph.GraphsTuple, num_nodes: int) -> jax.Array:
  """GCN aggregation of ``graph.nodes`` [N, H] along weighted edges (jraph form)."""
  weights = graph.edges  # [N*N] 0/1 weights of the static all-pairs edge list, self-loops included
  out_deg = jraph.segment_sum(weights, graph.senders, num_nodes)
  in_deg = jraph.segment_sum(weights, graph.receivers, num_nodes)
  out_norm = jax.lax.rsqrt(jnp.maximum(out_deg, 1.0))
  in_norm = jax.lax.rsqrt(jnp.maximum(in_deg, 1.0))
  messages = (graph.nodes * out_norm[:, None])[graph.senders] * weights[:, None]
  return jraph.segment_sum(messages, graph.receivers, num_nodes) * in_norm[:, None]


def _aggregate_dense(nodes: jax.Array, adj_hat: jax.Array) -> jax.Array:
  """The same aggregation as matrix products; ``adj_hat`` = A + I on active roles."""
  out_norm = jax.lax.rsqrt(jnp.maximum(adj_hat.sum(axis=1), 1.0))
  in_norm = jax.lax.rsqrt(jnp.maximum(adj_hat.sum(axis=0), 1.0))
  return in_norm[:, None] * (adj_hat.T @ (out_norm[:, None] * nodes))


def aggregate(nodes: jax.Array, adj: jax.Array, role_mask: jax.Array, impl: str = "dense") -> jax.Array:
  """One GCN propagation of nodes [N, H] over adjacency [N, N] with self-loops on active roles.

  ``impl`` is the aggregation form: 'segment' (jraph) or 'dense' (matrix products).
  """
  num_nodes = adj.shape[-1]
  adj_hat = adj.astype(nodes.dtype) + jnp.diag(role_mask.astype(nodes.dtype))
  if impl == "dense":
    return _aggregate_dense(nodes, adj_hat)
  if impl == "segment":
    senders, receivers = graphs.dense_edge_index(num_nodes)
    graph = jraph.GraphsTuple(
        nodes=nodes, edges=adj_hat.reshape(-1), senders=jnp.asarray(senders),
        receivers=jnp.asarray(receivers), n_node=jnp.array([num_nodes]),
        n_edge=jnp.array([num_nodes * num_nodes]), globals=None)
    return _aggregate_segment(graph, num_nodes)
  raise ValueError(f"unknown aggregation {impl!r}; choose 'segment' or 'dense'")


class GraphClassifier(nnx.Module):
  """Scores (query, DAG) pairs: a higher logit means a more promising topology."""

  def __init__(
      self,
      num_roles: int,
      query_dim: int,
      *,
      role_dim: int = 32,
      hidden_dim: int = 128,
      num_layers: int = 2,
      mlp_dim: int = 64,
      rngs: nnx.Rngs,
  ):
    if num_layers < 1:
      raise ValueError(f"the GCN needs num_layers >= 1, got {num_layers}")
    self.num_roles = num_roles
    self.query_dim = query_dim
    self.role_embed = nnx.Param(0.1 * jax.random.normal(rngs.params(), (num_roles, role_dim)))
    # First layer weight, split into its role and query halves of [role_emb ; query_emb].
    self.role_in = nnx.Linear(role_dim, hidden_dim, use_bias=False, rngs=rngs)
    self.query_in = nnx.Linear(query_dim, hidden_dim, use_bias=False, rngs=rngs)
    self.in_bias = nnx.Param(jnp.zeros((hidden_dim,)))
    self.layers = nnx.List([nnx.Linear(hidden_dim, hidden_dim, rngs=rngs) for _ in range(num_layers - 1)])
    self.project = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
    self.head_hidden = nnx.Linear(hidden_dim, mlp_dim, rngs=rngs)
    self.head_out = nnx.Linear(mlp_dim, 1, rngs=rngs)

  def node_inputs(self, query_emb: jax.Array) -> jax.Array:
    """Transformed node features [B, N, H] before any propagation (graph-independent)."""
    role_part = self.role_in(self.role_embed[...])  # [N, H]
    query_part = self.query_in(query_emb)  # [B, H]
    return role_part[None, :, :] + query_part[:, None, :]

  def score_graph(self, inputs: jax.Array, adj: jax.Array, role_mask: jax.Array, impl: str = "dense") -> jax.Array:
    """Logit of one graph (the per-pair form): inputs [N, H], adj [N, N], role_mask [N] -> [].

    ``impl`` is the aggregation form, 'segment' or 'dense'.
    """
    mask = role_mask.astype(inputs.dtype)
    h = jax.nn.relu(aggregate(inputs, adj, mask, impl) + self.in_bias[...])
    for layer in self.layers:
      h = jax.nn.relu(aggregate(layer(h), adj, mask, impl))
    pooled = (h * mask[:, None]).sum(0) / jnp.maximum(mask.sum(), 1.0)
    return self.head_out(jax.nn.relu(self.head_hidden(self.project(pooled))))[0]

  @gcn_fast.float32_matmuls
  def __call__(self, query_emb: jax.Array, adjs: jax.Array, role_mask: jax.Array | None = None,
               impl: str = "dense") -> jax.Array:
    """Scores K candidates for each of B queries.

    Args:
      query_emb: [B, D] query embeddings.
      adjs: [K, N, N] (one pool shared by all queries) or [B, K, N, N].
      role_mask: [N] or [B, N], 1 for active roles, 0 for padding. Default: all active.
      impl: 'dense' (blocked and factored, the fast path), 'dense_per_pair' or 'segment' (jraph), the last
        two one (query, graph) pair at a time.
    Returns:
      logits [B, K].
    """
    chex.assert_rank(query_emb, 2)
    chex.assert_rank(adjs, {3, 4})
    batch = query_emb.shape[0]
    if adjs.shape[-1] != self.num_roles or adjs.shape[-2] != self.num_roles:
      raise ValueError(f"adjacency stack has shape {adjs.shape}, expected [..., {self.num_roles}, {self.num_roles}]; "
                       "pad smaller graphs with graphs.pad_adjacency")
    if adjs.ndim == 4 and adjs.shape[0] != batch:
      raise ValueError(f"per-query adjacency stack has shape {adjs.shape} for {batch} queries; expected "
                       f"[{batch}, K, {self.num_roles}, {self.num_roles}]")
    if role_mask is None:
      role_mask = jnp.ones((self.num_roles,), query_emb.dtype)
    role_mask = jnp.asarray(role_mask, query_emb.dtype)
    if role_mask.shape not in ((self.num_roles,), (batch, self.num_roles)):
      raise ValueError(f"role_mask has shape {role_mask.shape}; expected [{self.num_roles}] or "
                       f"[{batch}, {self.num_roles}]")
    if impl == "dense":
      return gcn_fast.score_blocked(self.scoring_tensors(), query_emb, adjs.astype(query_emb.dtype), role_mask)
    if impl not in IMPLEMENTATIONS:
      raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    aggregation = "dense" if impl == "dense_per_pair" else impl
    role_mask = jnp.broadcast_to(role_mask, (batch, self.num_roles))
    inputs = self.node_inputs(query_emb)
    per_graph = lambda x, a, m: self.score_graph(x, a, m, aggregation)
    over_pool = jax.vmap(per_graph, in_axes=(None, 0, None))  # K candidates share a query's inputs
    adj_axis = 0 if adjs.ndim == 4 else None
    return jax.vmap(over_pool, in_axes=(0, adj_axis, 0))(inputs, adjs, role_mask)

  @gcn_fast.float32_matmuls
  def scoring_tensors(self) -> dict:
    """The parameter-derived tensors of the fast path (independent of queries and graphs; see ``score_shared_pool``)."""
    head_hidden = self.head_hidden.kernel[...]
    return {
        "role_part": self.role_in(self.role_embed[...]),  # [N, H]
        "query_kernel": self.query_in.kernel[...],  # [D, H]
        "in_bias": self.in_bias[...],
        "layers": [(layer.kernel[...], layer.bias[...]) for layer in self.layers],
        # Projection and head_hidden are both linear: one [H, mlp] matmul.
        "head_kernel": self.project.kernel[...] @ head_hidden,
        "head_bias": self.project.bias[...] @ head_hidden + self.head_hidden.bias[...],
        "out_kernel": self.head_out.kernel[...][:, 0],
        "out_bias": self.head_out.bias[...][0],
    }


@functools.partial(jax.jit, static_argnames=("graphdef", "impl"))
def score_single(graphdef, params, query_emb, adj, role_mask=None, impl: str = "dense"):
  """Jitted scorer of one (query [D], graph [N, N]) pair; the per-graph reference."""
  return nnx.merge(graphdef, params)(query_emb[None], adj[None], role_mask, impl=impl)[0, 0]


# Stage-2 gradient steps (per-query pools, B x G pairs) on the per-pair form where it measured faster
# (bench/stage2_epoch.py and a step-only timing in turns, H=64, 2 cores): with 3 roles at 32 x 32 pairs
# 1.1-1.5x faster than the fast path, a tie at 64 x 64; from 4 roles the fast path is faster (8 roles: 1.1-1.5x).
PER_PAIR_GRADIENT_MAX_ROLES = 3
PER_PAIR_GRADIENT_MAX_PAIRS = 2048


def training_impl(impl: str, batch: int, graphs_per_query: int, num_roles: int) -> str:
  """The form stage 2's gradient steps use for ``impl`` at their shapes ([batch, graphs_per_query] pairs).

  'dense' (the fast path) becomes 'dense_per_pair' for gradient steps of at most
  ``PER_PAIR_GRADIENT_MAX_ROLES`` roles and ``PER_PAIR_GRADIENT_MAX_PAIRS`` pairs,
  where that form's backward measured faster (its tiny batched products beat the
  fast path's factored first layer, whose role-embedding gradient is a product
  with N rows). Both compute the same function with gradients equal within 1e-5
  (tests/test_gcn.py); scoring and validation keep ``impl``. Other forms are
  returned unchanged.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
  small = num_roles <= PER_PAIR_GRADIENT_MAX_ROLES and batch * graphs_per_query <= PER_PAIR_GRADIENT_MAX_PAIRS
  return "dense_per_pair" if impl == "dense" and small else impl


def flops_per_score(num_roles: int, hidden_dim: int, num_layers: int, mlp_dim: int, query_dim: int,
                    role_dim: int, pool_size: int) -> float:
  """Multiply-add FLOPs (x2) per scored graph of the dense formulation, per-query work amortised."""
  n, h = num_roles, hidden_dim
  per_query = 2 * n * role_dim * h + 2 * query_dim * h
  per_graph = num_layers * 2 * n * n * h  # aggregations
  per_graph += (num_layers - 1) * 2 * n * h * h  # hidden-layer transforms
  per_graph += 2 * h * h + 2 * h * mlp_dim + 2 * mlp_dim  # projection and head
  return per_graph + per_query / pool_size

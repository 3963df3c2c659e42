"""Graph classifier: a GCN that scores candidate role DAGs for a query.

Node features are a trainable role embedding concatenated with the query
embedding. Message passing follows edge direction (``adj[i, j] = 1``: i -> j),
with self-loops and symmetric degree normalisation:

    H' = relu(D_in^{-1/2} (A + I)^T D_out^{-1/2} H W + b)

where D_out / D_in are the out- / in-degrees of A + I. After the GCN layers the
active roles are mean-pooled, projected, and an MLP gives one logit per graph.

Efficiency: the first layer's transform of ``[role_emb ; query_emb]`` does not
depend on the graph, so it is computed once per query ([B, N, H]) and shared by
all K candidates. Projection is linear, so it is applied after pooling (one
matmul per graph instead of one per node): the result is identical.

Two aggregation formulations share the parameters: ``segment`` (jraph
GraphsTuple + segment sums over a static all-pairs edge list weighted by the
adjacency, so shapes are static and the function vmaps over [K, N, N] stacks)
and ``dense`` (matrix products); a test keeps them equal.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import jraph
from flax import nnx

from hieramas_jax import graphs

IMPLEMENTATIONS = ("segment", "dense")


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


def aggregate(nodes: jax.Array, adj: jax.Array, role_mask: jax.Array, impl: str = "segment") -> jax.Array:
  """One GCN propagation of nodes [N, H] over adjacency [N, N] with self-loops on active roles."""
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
  raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {IMPLEMENTATIONS}")


class GraphClassifier(nnx.Module):
  """Scores (query, DAG) pairs: a higher logit means a more promising topology."""

  def __init__(
      self,
      num_roles: int,
      query_dim: int,
      *,
      role_dim: int = 32,
      hidden_dim: int = 64,
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

  def score_graph(self, inputs: jax.Array, adj: jax.Array, role_mask: jax.Array, impl: str = "segment") -> jax.Array:
    """Logit of one graph: inputs [N, H], adj [N, N], role_mask [N] -> []."""
    mask = role_mask.astype(inputs.dtype)
    h = jax.nn.relu(aggregate(inputs, adj, mask, impl) + self.in_bias[...])
    for layer in self.layers:
      h = jax.nn.relu(aggregate(layer(h), adj, mask, impl))
    pooled = (h * mask[:, None]).sum(0) / jnp.maximum(mask.sum(), 1.0)
    return self.head_out(jax.nn.relu(self.head_hidden(self.project(pooled))))[0]

  def __call__(self, query_emb: jax.Array, adjs: jax.Array, role_mask: jax.Array | None = None,
               impl: str = "segment") -> jax.Array:
    """Scores K candidates for each of B queries.

    Args:
      query_emb: [B, D] query embeddings.
      adjs: [K, N, N] (one pool shared by all queries) or [B, K, N, N].
      role_mask: [N] or [B, N], 1 for active roles, 0 for padding. Default: all active.
      impl: 'segment' (jraph) or 'dense'.
    Returns:
      logits [B, K].
    """
    chex.assert_rank(query_emb, 2)
    chex.assert_rank(adjs, {3, 4})
    batch = query_emb.shape[0]
    if adjs.shape[-1] != self.num_roles or adjs.shape[-2] != self.num_roles:
      raise ValueError(f"adjacency stack has shape {adjs.shape}, expected [..., {self.num_roles}, {self.num_roles}]; "
                       "pad smaller graphs with graphs.pad_adjacency")
    if role_mask is None:
      role_mask = jnp.ones((self.num_roles,), query_emb.dtype)
    role_mask = jnp.broadcast_to(role_mask, (batch, self.num_roles))
    inputs = self.node_inputs(query_emb)
    per_graph = lambda x, a, m: self.score_graph(x, a, m, impl)
    over_pool = jax.vmap(per_graph, in_axes=(None, 0, None))  # K candidates share a query's inputs
    adj_axis = 0 if adjs.ndim == 4 else None
    return jax.vmap(over_pool, in_axes=(0, adj_axis, 0))(inputs, adjs, role_mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "impl"))
def score_pool(graphdef, params, query_emb, adjs, role_mask=None, impl: str = "segment"):
  """Jitted pure scoring: logits [B, K] from split classifier state."""
  return nnx.merge(graphdef, params)(query_emb, adjs, role_mask, impl=impl)


@functools.partial(jax.jit, static_argnames=("graphdef", "impl"))
def score_single(graphdef, params, query_emb, adj, role_mask=None, impl: str = "segment"):
  """Jitted scorer of one (query [D], graph [N, N]) pair; the per-graph reference."""
  return nnx.merge(graphdef, params)(query_emb[None], adj[None], role_mask, impl=impl)[0, 0]


def flops_per_score(num_roles: int, hidden_dim: int, num_layers: int, mlp_dim: int, query_dim: int,
                    role_dim: int, pool_size: int) -> float:
  """Multiply-add FLOPs (x2) per scored graph of the dense formulation, per-query work amortised."""
  n, h = num_roles, hidden_dim
  per_query = 2 * n * role_dim * h + 2 * query_dim * h
  per_graph = num_layers * 2 * n * n * h  # aggregations
  per_graph += (num_layers - 1) * 2 * n * h * h  # hidden-layer transforms
  per_graph += 2 * h * h + 2 * h * mlp_dim + 2 * mlp_dim  # projection and head
  return per_graph + per_query / pool_size

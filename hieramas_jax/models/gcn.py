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

- ``dense`` (the default, and the one every caller uses): the pool is scored in
  blocks of about ``PAIRS_PER_BLOCK`` (query, graph) pairs under ``lax.map``, so
  working memory stays a few MB whatever B and K are. The normalised adjacency S
  is computed once per graph (once per pair only for per-query pools or masks).
  The first layer is factored: its input ``role_part[n] + query_part[b]`` is
  aggregated as ``S^T role_part`` (per graph) plus ``colsum(S)[n] * query_part[b]``,
  so no per-pair product remains in it. With one pool for all queries a block is
  laid out [G, N, B, H]: a hidden layer's transform is one [G*N*B, H] x [H, H]
  matmul, and its aggregation is N x N multiply-adds over whole [G, B, H] role
  slices that XLA fuses with the bias, relu and (last layer) the mean-pooling in
  one pass (``_propagate``; its gradient is that of the batched-product form).
  Projection and the first head layer are fused into one matmul (both linear).
  Gradients flow through this path (stage 2 trains on it from 4 roles up).
  ``score_pool`` runs it through a ``PoolScorer`` cached per graphdef (jitted
  once; nothing hashed per call).
- ``dense_per_pair``: the original dense formulation, one (query, graph) pair at
  a time under ``vmap`` (``score_graph``); the reference the fast path is tested
  and benchmarked against, and stage 2's gradient step where it measured faster
  (``training_impl``: 3 roles or fewer, small batches).
- ``segment``: the same per-pair form with jraph segment sums over a static
  all-pairs edge list weighted by the adjacency.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import jraph
from flax import nnx

from hieramas_jax import graphs

IMPLEMENTATIONS = ("dense", "dense_per_pair", "segment")
# Pairs per block of the fast path: measured (bench/graph_scoring.py) near the best from B=1 to B=256 on 2 cores;
# bounds its working memory (about 2 x PAIRS_PER_BLOCK x N x H floats).
PAIRS_PER_BLOCK = 3200


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


def normalized_adjacency(adj: jax.Array, role_mask: jax.Array) -> jax.Array:
  """S = D_out^{-1/2} (A + diag(mask)) D_in^{-1/2} for adj [..., N, N], mask broadcastable to [..., N]."""
  num_nodes = adj.shape[-1]
  adj_hat = adj + role_mask[..., None, :] * jnp.eye(num_nodes, dtype=adj.dtype)
  out_norm = jax.lax.rsqrt(jnp.maximum(adj_hat.sum(axis=-1), 1.0))
  in_norm = jax.lax.rsqrt(jnp.maximum(adj_hat.sum(axis=-2), 1.0))
  return out_norm[..., :, None] * adj_hat * in_norm[..., None, :]


def block_layout(num_graphs: int, batch: int, pairs_per_block: int | None = None) -> tuple[int, int]:
  """(blocks, graphs per block) of the fast path: about ``pairs_per_block`` pairs each, as little padding as can be."""
  pairs_per_block = PAIRS_PER_BLOCK if pairs_per_block is None else pairs_per_block
  target = max(1, min(num_graphs, pairs_per_block // max(batch, 1)))
  blocks = -(-num_graphs // target)
  return blocks, -(-num_graphs // blocks)


def _role_layout(s: jax.Array, z: jax.Array):
  """(role axis of z, a function giving [...] arrays z's feature dims, one role's slice of z)."""
  role_axis, feature_ndim = s.ndim - 2, z.ndim - s.ndim + 1
  expand = lambda x: x.reshape(x.shape + (1,) * feature_ndim)
  node = lambda x, i: jax.lax.index_in_dim(x, i, role_axis, keepdims=False)
  return role_axis, expand, node


def _propagate_einsum(s, col_sum, z, bias, weights):
  """``_propagate`` as one batched product per graph (or pair): its gradient is the fast path's backward."""
  role_axis, expand, _ = _role_layout(s, z)
  lead = "abcdef"[:s.ndim - 2]
  features = "uvwxyz"[:z.ndim - s.ndim + 1]
  aggregated = jnp.einsum(f"{lead}ij,{lead}i{features}->{lead}j{features}", s, z)
  rows = jax.nn.relu(aggregated + expand(col_sum) * bias)
  return rows if weights is None else (rows * expand(weights)).sum(role_axis)


@jax.custom_vjp
def _propagate(s, col_sum, z, bias, weights):
  """One GCN layer after its transform: relu(S^T z + colsum(S) bias), mean-pooled when ``weights`` is given.

  s: [..., N, N] normalised adjacencies; z: [..., N, *F] transformed rows (the role
  axis follows s's leading axes); col_sum: [..., N]; bias: [F[-1]]; weights: None,
  or pooling weights [..., N] broadcastable against s's leading axes. Returns
  [..., N, *F], or [..., *F] pooled. Written as N x N multiply-adds over whole role
  slices, which XLA fuses with the relu and the pooling into one pass over z; the
  backward is that of ``_propagate_einsum`` (the slice form's own gradient would
  materialise N x N padded copies of z).
  """
  role_axis, expand, node = _role_layout(s, z)
  n = s.shape[-1]
  rows = [jax.nn.relu(sum(expand(s[..., i, j]) * node(z, i) for i in range(n)) + expand(col_sum[..., j]) * bias)
          for j in range(n)]
  if weights is None:
    return jnp.stack(rows, axis=role_axis)
  return sum(expand(weights[..., j]) * row for j, row in enumerate(rows))


def _propagate_fwd(s, col_sum, z, bias, weights):
  return _propagate(s, col_sum, z, bias, weights), (s, col_sum, z, bias, weights)


def _propagate_bwd(residuals, cotangent):
  return jax.vjp(_propagate_einsum, *residuals)[1](cotangent)


_propagate.defvjp(_propagate_fwd, _propagate_bwd)


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
    """Logit of one graph (the per-pair form): inputs [N, H], adj [N, N], role_mask [N] -> [].

    ``impl`` is the aggregation form, 'segment' or 'dense'.
    """
    mask = role_mask.astype(inputs.dtype)
    h = jax.nn.relu(aggregate(inputs, adj, mask, impl) + self.in_bias[...])
    for layer in self.layers:
      h = jax.nn.relu(aggregate(layer(h), adj, mask, impl))
    pooled = (h * mask[:, None]).sum(0) / jnp.maximum(mask.sum(), 1.0)
    return self.head_out(jax.nn.relu(self.head_hidden(self.project(pooled))))[0]

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
      return self._score_blocked(query_emb, adjs.astype(query_emb.dtype), role_mask)
    if impl not in IMPLEMENTATIONS:
      raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    aggregation = "dense" if impl == "dense_per_pair" else impl
    role_mask = jnp.broadcast_to(role_mask, (batch, self.num_roles))
    inputs = self.node_inputs(query_emb)
    per_graph = lambda x, a, m: self.score_graph(x, a, m, aggregation)
    over_pool = jax.vmap(per_graph, in_axes=(None, 0, None))  # K candidates share a query's inputs
    adj_axis = 0 if adjs.ndim == 4 else None
    return jax.vmap(over_pool, in_axes=(0, adj_axis, 0))(inputs, adjs, role_mask)

  def _score_blocked(self, query_emb: jax.Array, adjs: jax.Array, role_mask: jax.Array) -> jax.Array:
    """The fast path of ``__call__`` (see the module docstring): logits [B, K].

    With one pool and one role mask for all queries a block's activations are
    [G, N, B, H] (a normalised adjacency per graph); otherwise [B, G, N, H] (one
    per pair).
    """
    batch, num_graphs, n = query_emb.shape[0], adjs.shape[-3], self.num_roles
    shared = adjs.ndim == 3 and role_mask.ndim == 1
    role_part = self.role_in(self.role_embed[...])  # [N, H]
    query_part = self.query_in(query_emb)  # [B, H]
    in_bias = self.in_bias[...]
    pool_weights = role_mask / jnp.maximum(role_mask.sum(-1, keepdims=True), 1.0)  # [N] or [B, N]
    # Projection and head_hidden are both linear: one [H, mlp] matmul.
    head_kernel = self.project.kernel[...] @ self.head_hidden.kernel[...]
    head_bias = self.project.bias[...] @ self.head_hidden.kernel[...] + self.head_hidden.bias[...]
    out_kernel, out_bias = self.head_out.kernel[...][:, 0], self.head_out.bias[...][0]
    layers = [(layer.kernel[...], layer.bias[...]) for layer in self.layers]
    # Pooling weights over the role axis, broadcastable against a block's leading axes ([G] or [B, G]).
    weights = pool_weights if pool_weights.ndim == 1 else pool_weights[:, None, :]

    def block(adj: jax.Array) -> jax.Array:  # [G, N, N] or [B, G, N, N] -> [G, B] logits
      mask = role_mask if shared or role_mask.ndim == 1 else role_mask[:, None, :]
      s = normalized_adjacency(adj, mask)
      col_sum = s.sum(axis=-2)  # [..., N]: what a constant input row aggregates to
      role_term = jnp.einsum("...ij,ih->...jh", s, role_part)  # S^T role_part: [..., N, H]
      # Layer 1, factored: S^T (role_part + query_part) = S^T role_part + colsum(S) query_part.
      if shared:  # [G, N, B, H]
        h = jax.nn.relu(role_term[:, :, None, :] + col_sum[:, :, None, None] * query_part + in_bias)
      else:  # [B, G, N, H]
        h = jax.nn.relu(role_term + col_sum[..., None] * query_part[:, None, None, :] + in_bias)
      if not layers:
        role_axis, expand, node = _role_layout(s, h)
        pooled = sum(expand(weights[..., j]) * node(h, j) for j in range(n))
      for index, (kernel, bias) in enumerate(layers):
        last = index == len(layers) - 1  # the last layer's aggregation, relu and mean-pooling in one pass
        h = _propagate(s, col_sum, h @ kernel, bias, weights if last else None)  # one [G*N*B, H] x [H, H] matmul
      pooled = h if layers else pooled
      logits = jax.nn.relu(pooled @ head_kernel + head_bias) @ out_kernel + out_bias
      return logits if shared else logits.T

    if not shared:
      adjs = jnp.broadcast_to(adjs, (batch, num_graphs, n, n))
    blocks, per_block = block_layout(num_graphs, batch)
    pad = blocks * per_block - num_graphs  # padding: empty graphs, sliced off again
    if shared:
      stacked = jnp.pad(adjs, ((0, pad), (0, 0), (0, 0))).reshape(blocks, per_block, n, n)
    else:
      stacked = jnp.pad(adjs, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, blocks, per_block, n, n)
      stacked = jnp.moveaxis(stacked, 1, 0)
    # One block needs no loop (a while loop costs a few microseconds per call at small B x K).
    scores = block(stacked[0])[None] if blocks == 1 else jax.lax.map(block, stacked)  # [blocks, G, B]
    return scores.reshape(blocks * per_block, batch)[:num_graphs].T


def _score_merged(graphdef, params, query_emb, adjs, role_mask, impl: str):
  """Logits [B, K] of the classifier ``nnx.merge(graphdef, params)`` (traced once per PoolScorer and shape)."""
  return nnx.merge(graphdef, params)(query_emb, adjs, role_mask, impl=impl)


class PoolScorer:
  """``score_pool`` bound to one graphdef and implementation: jitted once, with nothing hashed per call.

  ``jax.jit`` hashes its static arguments on every call, and a flax graphdef hashes
  in Python (over 100 us, the better part of a B=1, K=50 call); closing over the
  graphdef leaves jit's C++ dispatch of the array arguments only. Shapes are the
  only trace key: new parameter or input values never recompile.
  """

  def __init__(self, graphdef, impl: str = "dense"):
    if impl not in IMPLEMENTATIONS:
      raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    self.graphdef = graphdef
    self.impl = impl
    self._jitted = jax.jit(lambda params, q, adjs, mask: _score_merged(graphdef, params, q, adjs, mask, impl))

  def __call__(self, params, query_emb, adjs, role_mask=None) -> jax.Array:
    """Logits [B, K] of query embeddings [B, D] against adjacencies [K, N, N] or [B, K, N, N]."""
    return self._jitted(params, query_emb, adjs, role_mask)

  def lower(self, params, query_emb, adjs, role_mask=None):
    """The jitted scorer lowered for these shapes (``.compile().memory_analysis()`` and the like)."""
    return self._jitted.lower(params, query_emb, adjs, role_mask)


# PoolScorers of recently used graphdefs, keyed by identity (a graphdef cannot be weakly referenced; holding it
# keeps its id from being reused while its entry lives). Bounded: a process builds few classifiers.
_SCORERS: dict[tuple[int, str], PoolScorer] = {}
_MAX_SCORERS = 32


def pool_scorer(graphdef, impl: str = "dense") -> PoolScorer:
  """The cached PoolScorer of ``graphdef`` (the same object on every call with the same graphdef object)."""
  key = (id(graphdef), impl)
  scorer = _SCORERS.get(key)
  if scorer is None or scorer.graphdef is not graphdef:
    scorer = PoolScorer(graphdef, impl)
    _SCORERS.pop(key, None)
    if len(_SCORERS) >= _MAX_SCORERS:
      _SCORERS.pop(next(iter(_SCORERS)))  # the oldest
    _SCORERS[key] = scorer
  return scorer


def score_pool(graphdef, params, query_emb, adjs, role_mask=None, impl: str = "dense") -> jax.Array:
  """Jitted pure scoring: logits [B, K] from split classifier state (through ``pool_scorer(graphdef, impl)``)."""
  return pool_scorer(graphdef, impl)(params, query_emb, adjs, role_mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "impl"))
def score_single(graphdef, params, query_emb, adj, role_mask=None, impl: str = "segment"):
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


def fast_path_flops_per_score(num_roles: int, hidden_dim: int, num_layers: int, mlp_dim: int, query_dim: int,
                              role_dim: int, batch: int, pool_size: int) -> float:
  """Multiply-add FLOPs (x2) the fast path executes per score: per-graph and per-query work amortised."""
  n, h = num_roles, hidden_dim
  per_pair = 2 * n * h  # first layer: colsum(S) * query_part + S^T role_part
  per_pair += (num_layers - 1) * (2 * n * h * h + 2 * n * n * h)  # hidden-layer transforms and aggregations
  per_pair += 2 * n * h + 2 * h * mlp_dim + 2 * mlp_dim  # pooling, fused projection + head, output
  per_graph = 2 * n * n * h  # S^T role_part
  per_query = 2 * query_dim * h
  per_call = 2 * n * role_dim * h + 2 * h * h * mlp_dim
  return per_pair + per_graph / batch + per_query / pool_size + per_call / (batch * pool_size)

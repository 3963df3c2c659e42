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
  once; nothing hashed per call). For one pool under one mask the path is three
  functions composed: ``GraphClassifier.scoring_tensors`` (parameters only),
  ``prepare_shared_pool`` (S, colsum(S), S^T role_part per graph) and
  ``score_shared_pool`` (the per-query rest); ``PoolScorer`` caches the first two
  (the same pool is scored for many queries), so a call runs one chain of about
  ten ops.
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
import numpy as np
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

  def _score_blocked(self, query_emb: jax.Array, adjs: jax.Array, role_mask: jax.Array) -> jax.Array:
    """The fast path of ``__call__`` (see the module docstring): logits [B, K].

    With one pool and one role mask for all queries a block's activations are
    [G, N, B, H] (a normalised adjacency per graph, ``prepare_shared_pool``);
    otherwise [B, G, N, H] (one per pair).
    """
    tensors = self.scoring_tensors()
    batch, num_graphs, n = query_emb.shape[0], adjs.shape[-3], self.num_roles
    if adjs.ndim == 3 and role_mask.ndim == 1:
      layout = block_layout(num_graphs, batch)
      return score_shared_pool(tensors, prepare_shared_pool(tensors, adjs, role_mask, layout), query_emb, num_graphs)
    query_part = query_emb @ tensors["query_kernel"]  # [B, H]
    # Pooling weights broadcastable against a block's leading axes [B, G].
    weights = _pool_weights(role_mask)
    weights = weights if weights.ndim == 1 else weights[:, None, :]
    mask = role_mask if role_mask.ndim == 1 else role_mask[:, None, :]

    def block(adj: jax.Array) -> jax.Array:  # [B, G, N, N] -> [G, B] logits
      s, col_sum, role_term = _graph_terms(tensors, adj, mask)
      # Layer 1, factored: S^T (role_part + query_part) = S^T role_part + colsum(S) query_part.
      h = jax.nn.relu(role_term + col_sum[..., None] * query_part[:, None, None, :] + tensors["in_bias"])
      return _layers_and_head(tensors, s, col_sum, h, weights).T

    adjs = jnp.broadcast_to(adjs, (batch, num_graphs, n, n))
    blocks, per_block = block_layout(num_graphs, batch)
    pad = blocks * per_block - num_graphs  # padding: empty graphs, sliced off again
    stacked = jnp.pad(adjs, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, blocks, per_block, n, n)
    stacked = jnp.moveaxis(stacked, 1, 0)
    # One block needs no loop (a while loop costs a few microseconds per call at small B x K).
    scores = block(stacked[0])[None] if blocks == 1 else jax.lax.map(block, stacked)  # [blocks, G, B]
    return scores.reshape(blocks * per_block, batch)[:num_graphs].T


def _pool_weights(role_mask: jax.Array) -> jax.Array:
  """Mean-pooling weights over the active roles: [N] or [B, N]."""
  return role_mask / jnp.maximum(role_mask.sum(-1, keepdims=True), 1.0)


def _graph_terms(tensors: dict, adj: jax.Array, mask: jax.Array):
  """(S, colsum(S), S^T role_part) of adjacencies [..., N, N]: everything of layer 1 that needs no query."""
  s = normalized_adjacency(adj, mask)
  col_sum = s.sum(axis=-2)  # [..., N]: what a constant input row aggregates to
  role_term = jnp.einsum("...ij,ih->...jh", s, tensors["role_part"])  # S^T role_part: [..., N, H]
  return s, col_sum, role_term


def _layers_and_head(tensors: dict, s: jax.Array, col_sum: jax.Array, h: jax.Array, weights: jax.Array):
  """Hidden layers, mean-pooling and head after layer 1's activations h: logits over h's leading axes."""
  layers = tensors["layers"]
  if not layers:
    role_axis, expand, node = _role_layout(s, h)
    pooled = sum(expand(weights[..., j]) * node(h, j) for j in range(s.shape[-1]))
  for index, (kernel, bias) in enumerate(layers):
    last = index == len(layers) - 1  # the last layer's aggregation, relu and mean-pooling in one pass
    h = _propagate(s, col_sum, h @ kernel, bias, weights if last else None)  # one [G*N*B, H] x [H, H] matmul
  pooled = h if layers else pooled
  return jax.nn.relu(pooled @ tensors["head_kernel"] + tensors["head_bias"]) @ tensors["out_kernel"] + \
      tensors["out_bias"]


def prepare_shared_pool(tensors: dict, adjs: jax.Array, role_mask: jax.Array, layout: tuple[int, int]) -> dict:
  """The query-independent part of scoring one pool [K, N, N] under one role mask [N], in blocks.

  ``layout`` is ``block_layout(K, B)``; ``tensors`` are ``GraphClassifier.scoring_tensors()``.
  Returns the blocked normalised adjacencies ``s`` [blocks, G, N, N], their
  column sums and layer 1's role term S^T role_part [blocks, G, N, H] (padding:
  empty graphs). ``PoolScorer`` caches it per pool, mask and parameters.
  """
  blocks, per_block = layout
  num_graphs, n = adjs.shape[0], adjs.shape[-1]
  pad = blocks * per_block - num_graphs  # padding: empty graphs, sliced off again
  stacked = jnp.pad(adjs, ((0, pad), (0, 0), (0, 0))).reshape(blocks, per_block, n, n)
  s, col_sum, role_term = _graph_terms(tensors, stacked, role_mask)
  return {"s": s, "col_sum": col_sum, "role_term": role_term, "weights": _pool_weights(role_mask)}


def score_shared_pool(tensors: dict, pool: dict, query_emb: jax.Array, num_graphs: int) -> jax.Array:
  """Logits [B, K] of queries [B, D] against a pool prepared by ``prepare_shared_pool`` (K = ``num_graphs``).

  A block's activations are [G, N, B, H]: layer 1 is the per-graph role term
  plus colsum(S) times the per-query term, with no product per (query, graph) pair.
  """
  batch = query_emb.shape[0]
  query_part = query_emb @ tensors["query_kernel"]  # [B, H]
  weights = pool["weights"]  # [N]: one mask for every block

  def block(terms) -> jax.Array:  # per-graph terms of G graphs -> [G, B] logits
    s, col_sum, role_term = terms
    h = jax.nn.relu(role_term[:, :, None, :] + col_sum[:, :, None, None] * query_part + tensors["in_bias"])
    return _layers_and_head(tensors, s, col_sum, h, weights)

  terms = (pool["s"], pool["col_sum"], pool["role_term"])
  blocks, per_block = pool["s"].shape[:2]
  # One block needs no loop (a while loop costs a few microseconds per call at small B x K).
  scores = block(jax.tree.map(lambda x: x[0], terms))[None] if blocks == 1 else jax.lax.map(block, terms)
  return scores.reshape(blocks * per_block, batch)[:num_graphs].T


def _scoring_tensors(graphdef, params) -> dict:
  return nnx.merge(graphdef, params).scoring_tensors()


def _score_merged(graphdef, params, query_emb, adjs, role_mask, impl: str):
  """Logits [B, K] of the classifier ``nnx.merge(graphdef, params)`` (traced once per PoolScorer and shape)."""
  return nnx.merge(graphdef, params)(query_emb, adjs, role_mask, impl=impl)


def _input_key(x):
  """A cache key standing for an input's value, or None if it cannot be keyed (a tracer or an unknown type).

  Jax arrays are immutable: their identity stands for their value while the
  cache entry holds them (so the id is not reused). NumPy arrays can change in
  place: they are keyed by content.
  """
  if x is None:
    return ("none",)
  if isinstance(x, jax.core.Tracer):
    return None
  if isinstance(x, jax.Array):
    return ("id", id(x))
  if isinstance(x, np.ndarray):
    return ("bytes", x.shape, x.dtype.str, x.tobytes())
  return None


class PoolScorer:
  """``score_pool`` bound to one graphdef and implementation: jitted once, with nothing hashed per call.

  ``jax.jit`` hashes its static arguments on every call, and a flax graphdef hashes
  in Python (over 100 us, the better part of a B=1, K=50 call); closing over the
  graphdef leaves jit's C++ dispatch of the array arguments only. Shapes are the
  only trace key: new parameter or input values never recompile.

  On the fast path with one pool and one role mask for all queries, the work that
  does not depend on the queries is done once and cached: the parameter-derived
  tensors (``GraphClassifier.scoring_tensors``, keyed by the parameter leaves) and
  the pool's normalised adjacencies and layer-1 role term (``prepare_shared_pool``,
  keyed by parameters, pool, mask and block layout; jax arrays by identity, NumPy
  arrays by content). A call then runs only the per-query part
  (``score_shared_pool``): a few large ops in one chain instead of about twenty
  small ones, most of the fixed cost of a small call. The composed computation is
  the one ``GraphClassifier.__call__`` traces, so scores agree with it (tests).
  """

  MAX_POOLS = 8  # prepared pools kept per scorer (each O(K N H) floats)

  def __init__(self, graphdef, impl: str = "dense"):
    if impl not in IMPLEMENTATIONS:
      raise ValueError(f"unknown GCN implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    self.graphdef = graphdef
    self.impl = impl
    self._jitted = jax.jit(lambda params, q, adjs, mask: _score_merged(graphdef, params, q, adjs, mask, impl))
    self._tensors = jax.jit(lambda params: _scoring_tensors(graphdef, params))
    self._prepare = jax.jit(prepare_shared_pool, static_argnums=3)
    self._score = jax.jit(score_shared_pool, static_argnums=3)
    self._tensors_entry = None  # (parameter leaves, their keys, tensors)
    self._pools: dict[tuple, tuple] = {}  # key -> (inputs held so their ids stay theirs, prepared pool)

  def _cached_tensors(self, params):
    """(tensors, (leaves, their ids)) of ``params``, or (None, None) when a leaf cannot be keyed (see ``_input_key``)."""
    leaves = jax.tree.leaves(params)
    ids = tuple(map(id, leaves))
    entry = self._tensors_entry
    if entry is not None and entry[1] == ids:  # the same live objects (the entry holds them): the same values
      return entry[2], entry
    if not all(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) for leaf in leaves):
      return None, None  # NumPy leaves can change in place, tracers have no value: no caching
    entry = self._tensors_entry = (leaves, ids, self._tensors(params))
    return entry[2], entry

  def prepared_pool(self, params, adjs, role_mask, batch: int):
    """(tensors, prepared pool) for a shared pool [K, N, N] and mask [N] or None; (None, None) if not cacheable."""
    tensors, params_entry = self._cached_tensors(params)
    pool_key, mask_key = _input_key(adjs), _input_key(role_mask)
    n = tensors["role_part"].shape[0] if tensors is not None else None
    if tensors is None or pool_key is None or mask_key is None or adjs.shape[-2:] != (n, n) or (
        role_mask is not None and role_mask.shape != (n,)):
      return None, None  # not cacheable, or wrong shapes (the model's checks say what is wrong)
    layout = block_layout(adjs.shape[0], batch)
    key = (params_entry[1], pool_key, mask_key, layout)
    entry = self._pools.get(key)
    if entry is None:
      mask = jnp.ones((n,), jnp.float32) if role_mask is None else jnp.asarray(role_mask, jnp.float32)
      held = (params_entry[0], adjs, role_mask)  # keeps the keyed ids from being reused while the entry lives
      entry = (held, self._prepare(tensors, jnp.asarray(adjs, jnp.float32), mask, layout))
      if len(self._pools) >= self.MAX_POOLS:
        self._pools.pop(next(iter(self._pools)))  # the oldest
      self._pools[key] = entry
    return tensors, entry

  def __call__(self, params, query_emb, adjs, role_mask=None) -> jax.Array:
    """Logits [B, K] of query embeddings [B, D] against adjacencies [K, N, N] or [B, K, N, N]."""
    if self.impl == "dense" and getattr(adjs, "ndim", 0) == 3 and getattr(role_mask, "ndim", 1) == 1 and \
        getattr(query_emb, "ndim", 0) == 2 and getattr(query_emb, "dtype", None) == jnp.float32:
      tensors, entry = self.prepared_pool(params, adjs, role_mask, query_emb.shape[0])
      if tensors is not None and query_emb.shape[1] == tensors["query_kernel"].shape[0]:
        return self._score(tensors, entry[1], query_emb, adjs.shape[0])
    return self._jitted(params, query_emb, adjs, role_mask)

  def lower(self, params, query_emb, adjs, role_mask=None):
    """What a call with these inputs runs, lowered (``.compile().memory_analysis()`` and the like).

    The per-query executable of a cached shared pool, or the whole computation otherwise.
    """
    if self.impl == "dense" and adjs.ndim == 3 and (role_mask is None or role_mask.ndim == 1):
      tensors, entry = self.prepared_pool(params, adjs, role_mask, query_emb.shape[0])
      if tensors is not None:
        return self._score.lower(tensors, entry[1], query_emb, adjs.shape[0])
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

"""The GCN's fast scoring path: blocked, factored, one normalised adjacency per graph.

The pool is scored in blocks of about ``PAIRS_PER_BLOCK`` (query, graph) pairs
under ``lax.map``, so working memory stays a few MB whatever B and K are. The
normalised adjacency S is computed once per graph (once per pair only for
per-query pools or masks). The first layer is factored: its input
``role_part[n] + query_part[b]`` is aggregated as ``S^T role_part`` (per graph)
plus ``colsum(S)[n] * query_part[b]``, so no per-pair product remains in it.
With one pool for all queries a block is laid out [G, N, B, H]: a hidden layer's
transform is one [G*N*B, H] x [H, H] matmul, and its aggregation is N x N
multiply-adds over whole [G, B, H] role slices that XLA fuses with the bias,
relu and (last layer) the mean-pooling in one pass (``_propagate``; its gradient
is that of the batched-product form). Projection and the first head layer are
fused into one matmul (both linear).

For one pool under one mask the path is three functions composed:
``GraphClassifier.scoring_tensors`` (parameters only), ``prepare_shared_pool``
(S, colsum(S), S^T role_part per graph) and ``score_shared_pool`` (the
per-query rest). ``host_pool`` / ``host_score`` are the same per-query rest in
NumPy, run on the caller's thread for calls too small to pay for a dispatch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("dense", "dense_per_pair", "segment")  # the GCN's scoring forms (see models/gcn.py)
# Pairs per block of the fast path (bench/graph_scoring.py's scores_per_s_by_pairs_per_block): 1600 was 1.2-2x
# faster than 3200 at B=64-256 on 2 loaded cores (a block's [G, N, B, H] activations, 3.3 MB, stay nearer the
# 1 MB-per-core L2), the same at B <= 8. Bounds working memory (about 2 x PAIRS_PER_BLOCK x N x H floats).
PAIRS_PER_BLOCK = 1600
# On an accelerator: blocks run one after another under lax.map, and a small block leaves most of the device idle
# (bench/graph_scoring.py's scores_per_s_by_pairs_per_block on a GPU). Bounds working memory there too.
ACCELERATOR_PAIRS_PER_BLOCK = 262144


def default_pairs_per_block() -> int:
  """Pairs per block on the default backend: ``PAIRS_PER_BLOCK`` on a CPU, else ``ACCELERATOR_PAIRS_PER_BLOCK``."""
  return PAIRS_PER_BLOCK if jax.default_backend() == "cpu" else ACCELERATOR_PAIRS_PER_BLOCK


def float32_matmuls(fn):
  """``fn`` with its matrix products in float32 on every backend (``Precision.HIGHEST``).

  By default a GPU multiplies float32 matrices in TF32, which moved scores by up
  to 7e-4 on an H200 (bench/graph_scoring.py): enough to route a query to another
  graph than a CPU does with the same checkpoint. A CPU computes float32 either way.
  """

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.default_matmul_precision("highest"):
      return fn(*args, **kwargs)

  return wrapped


def normalized_adjacency(adj: jax.Array, role_mask: jax.Array) -> jax.Array:
  """S = D_out^{-1/2} (A + diag(mask)) D_in^{-1/2} for adj [..., N, N], mask broadcastable to [..., N]."""
  num_nodes = adj.shape[-1]
  adj_hat = adj + role_mask[..., None, :] * jnp.eye(num_nodes, dtype=adj.dtype)
  out_norm = jax.lax.rsqrt(jnp.maximum(adj_hat.sum(axis=-1), 1.0))
  in_norm = jax.lax.rsqrt(jnp.maximum(adj_hat.sum(axis=-2), 1.0))
  return out_norm[..., :, None] * adj_hat * in_norm[..., None, :]


def block_layout(num_graphs: int, batch: int, pairs_per_block: int | None = None) -> tuple[int, int]:
  """(blocks, graphs per block) of the fast path: about ``pairs_per_block`` pairs each, as little padding as can be.

  ``pairs_per_block`` defaults to ``default_pairs_per_block()``.
  """
  pairs_per_block = default_pairs_per_block() if pairs_per_block is None else pairs_per_block
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


@float32_matmuls  # traced when the gradient is, outside the forward's precision context
def _propagate_bwd(residuals, cotangent):
  return jax.vjp(_propagate_einsum, *residuals)[1](cotangent)


_propagate.defvjp(_propagate_fwd, _propagate_bwd)


def pool_weights(role_mask: jax.Array) -> jax.Array:
  """Mean-pooling weights over the active roles: [N] or [B, N]."""
  return role_mask / jnp.maximum(role_mask.sum(-1, keepdims=True), 1.0)


def graph_terms(tensors: dict, adj: jax.Array, mask: jax.Array):
  """(S, colsum(S), S^T role_part) of adjacencies [..., N, N]: everything of layer 1 that needs no query."""
  s = normalized_adjacency(adj, mask)
  col_sum = s.sum(axis=-2)  # [..., N]: what a constant input row aggregates to
  role_term = jnp.einsum("...ij,ih->...jh", s, tensors["role_part"])  # S^T role_part: [..., N, H]
  return s, col_sum, role_term


def layers_and_head(tensors: dict, s: jax.Array, col_sum: jax.Array, h: jax.Array, weights: jax.Array):
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


@float32_matmuls
def score_blocked(tensors: dict, query_emb: jax.Array, adjs: jax.Array, role_mask: jax.Array) -> jax.Array:
  """Logits [B, K] of queries [B, D] against adjacencies [K, N, N] or [B, K, N, N] under a mask [N] or [B, N].

  With one pool and one role mask for all queries a block's activations are
  [G, N, B, H] (a normalised adjacency per graph, ``prepare_shared_pool``);
  otherwise [B, G, N, H] (one per pair).
  """
  batch, num_graphs, n = query_emb.shape[0], adjs.shape[-3], adjs.shape[-1]
  if adjs.ndim == 3 and role_mask.ndim == 1:
    layout = block_layout(num_graphs, batch)
    return score_shared_pool(tensors, prepare_shared_pool(tensors, adjs, role_mask, layout), query_emb, num_graphs)
  query_part = query_emb @ tensors["query_kernel"]  # [B, H]
  # Pooling weights broadcastable against a block's leading axes [B, G].
  weights = pool_weights(role_mask)
  weights = weights if weights.ndim == 1 else weights[:, None, :]
  mask = role_mask if role_mask.ndim == 1 else role_mask[:, None, :]

  def block(adj: jax.Array) -> jax.Array:  # [B, G, N, N] -> [G, B] logits
    s, col_sum, role_term = graph_terms(tensors, adj, mask)
    # Layer 1, factored: S^T (role_part + query_part) = S^T role_part + colsum(S) query_part.
    h = jax.nn.relu(role_term + col_sum[..., None] * query_part[:, None, None, :] + tensors["in_bias"])
    return layers_and_head(tensors, s, col_sum, h, weights).T

  adjs = jnp.broadcast_to(adjs, (batch, num_graphs, n, n))
  blocks, per_block = block_layout(num_graphs, batch)
  pad = blocks * per_block - num_graphs  # padding: empty graphs, sliced off again
  stacked = jnp.pad(adjs, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, blocks, per_block, n, n)
  stacked = jnp.moveaxis(stacked, 1, 0)
  # One block needs no loop (a while loop costs a few microseconds per call at small B x K).
  scores = block(stacked[0])[None] if blocks == 1 else jax.lax.map(block, stacked)  # [blocks, G, B]
  return scores.reshape(blocks * per_block, batch)[:num_graphs].T


@float32_matmuls
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
  s, col_sum, role_term = graph_terms(tensors, stacked, role_mask)
  return {"s": s, "col_sum": col_sum, "role_term": role_term, "weights": pool_weights(role_mask)}


@float32_matmuls
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
    return layers_and_head(tensors, s, col_sum, h, weights)

  terms = (pool["s"], pool["col_sum"], pool["role_term"])
  blocks, per_block = pool["s"].shape[:2]
  # One block needs no loop (a while loop costs a few microseconds per call at small B x K).
  scores = block(jax.tree.map(lambda x: x[0], terms))[None] if blocks == 1 else jax.lax.map(block, terms)
  return scores.reshape(blocks * per_block, batch)[:num_graphs].T


# ---------------------------------------------------------------------------
# The same per-query part in NumPy, on the caller's thread (small calls)
# ---------------------------------------------------------------------------

# OpenBLAS runs a product of at most this many multiply-adds on the calling thread (its SMP threshold,
# 65536 x 4); larger ones wake its worker threads, which on a loaded machine cost milliseconds.
_SINGLE_THREAD_PRODUCT = 65536 * 4


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """x [M, K] @ w [K, N] as products small enough that OpenBLAS keeps each on this thread."""
  rows = max(1, _SINGLE_THREAD_PRODUCT // (w.shape[0] * w.shape[1]))
  if x.shape[0] <= rows:
    return x @ w
  whole = x.shape[0] // rows * rows
  out = np.empty((x.shape[0], w.shape[1]), np.float32)
  # One NumPy call over [M // rows, rows, K] stacks: a small product per stacked matrix.
  np.matmul(x[:whole].reshape(-1, rows, x.shape[1]), w, out=out[:whole].reshape(-1, rows, w.shape[1]))
  if whole < x.shape[0]:
    out[whole:] = x[whole:] @ w
  return out


def host_tensors(tensors: dict) -> dict:
  """``scoring_tensors`` as float32 NumPy arrays (what ``host_score`` takes)."""
  return jax.tree.map(lambda x: np.asarray(x, np.float32), tensors)


def host_pool(tensors: dict, pool: dict, num_graphs: int) -> dict:
  """A pool prepared by ``prepare_shared_pool`` (any block layout) as ``host_score``'s NumPy terms.

  ``tensors`` are ``host_tensors``. Biases that do not depend on the query are
  added here once: layer 1's and colsum(S) times each hidden layer's.
  """
  n = pool["s"].shape[-1]
  unblock = lambda x: np.asarray(x, np.float32).reshape((-1,) + x.shape[2:])[:num_graphs]
  s, col_sum, role_term = unblock(pool["s"]), unblock(pool["col_sum"]), unblock(pool["role_term"])
  return {"s_t": np.ascontiguousarray(s.transpose(0, 2, 1)),  # [K, N, N]: S^T, one per graph
          "col_sum": col_sum[:, :, None],  # [K, N, 1]
          "role_term_biased": role_term + tensors["in_bias"],  # [K, N, H]
          "layer_biases": [col_sum[:, :, None] * bias for _, bias in tensors["layers"]],  # [K, N, H] each
          "weights": np.asarray(pool["weights"], np.float32).reshape(n)}


def host_score(tensors: dict, pool: dict, query_emb: np.ndarray) -> np.ndarray:
  """Logits [B, K] of queries [B, D] against ``host_pool`` terms: ``score_shared_pool`` in NumPy.

  Activations are [K, N, B*H]: each layer's transform is one product, its
  aggregation one stacked [N, N] x [N, B*H] product per graph.
  """
  num_graphs, n = pool["s_t"].shape[:2]
  batch = query_emb.shape[0]
  query_part = _matmul(np.asarray(query_emb, np.float32), tensors["query_kernel"])  # [B, H]
  h = pool["col_sum"][..., None] * query_part  # [K, N, B, H]
  h += pool["role_term_biased"][:, :, None, :]
  np.maximum(h, 0.0, out=h)
  for (kernel, _), bias in zip(tensors["layers"], pool["layer_biases"]):
    z = _matmul(h.reshape(-1, kernel.shape[0]), kernel).reshape(num_graphs, n, -1)
    h = np.matmul(pool["s_t"], z).reshape(num_graphs, n, batch, -1)
    h += bias[:, :, None, :]
    np.maximum(h, 0.0, out=h)
  pooled = np.matmul(pool["weights"], h.reshape(num_graphs, n, -1)).reshape(num_graphs * batch, -1)
  hidden = _matmul(pooled, tensors["head_kernel"])
  hidden += tensors["head_bias"]
  np.maximum(hidden, 0.0, out=hidden)
  return (hidden @ tensors["out_kernel"] + tensors["out_bias"]).reshape(num_graphs, batch).T


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

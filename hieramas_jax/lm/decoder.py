"""A Llama / Qwen3 decoder: pure functions on a parameter dict, and a Flax NNX module around them.

The compute is written once, as pure functions of the parameter dict (``forward``,
``hidden_states``, ``logits_from_hidden``) so they jit with the config as a static
argument and the parameters as a shardable pytree. ``Decoder`` is the NNX view of the
same dict (``Decoder.from_params`` / ``Decoder.to_params``).

Parameters (matrices are [in, out], y = x @ W, the transpose of a HF ``nn.Linear`` weight;
layer weights stacked on axis 0 so ``lax.scan`` runs the layers and 30 layers compile as one)::

  {'embed': [V, D],
   'layers': {'attn_norm': [L, D], 'wq': [L, D, Hq*hd], 'wk': [L, D, Hkv*hd], 'wv': [L, D, Hkv*hd],
              'wo': [L, Hq*hd, D], 'q_norm': [L, hd], 'k_norm': [L, hd] (only with cfg.qk_norm),
              'mlp_norm': [L, D], 'w_gate': [L, D, F], 'w_up': [L, D, F], 'w_down': [L, F, D]},
   'final_norm': [D],
   'lm_head': [D, V]}  (absent with cfg.tie_embeddings: the head is embed.T)

Q/K columns follow HF's rotate_half RoPE convention (the two halves of a head are the
pair). A KV cache holds keys and values by absolute position: slot s of row b is the
token at position s, so a row's positions are its own (per-row lengths in one batch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hieramas_jax.lm import config as config_lib

# Large finite negative rather than -inf: a fully masked row (a padding query) stays finite.
MASKED_LOGIT = -1e30

Params = dict[str, Any]


class KVCache(NamedTuple):
  """Keys and values of every layer by absolute position: k, v [L, B, S, Hkv, hd]."""

  k: jax.Array
  v: jax.Array

  @property
  def max_length(self) -> int:
    return self.k.shape[2]


def init_cache(cfg: config_lib.DecoderConfig, batch: int, max_length: int, dtype=jnp.float32) -> KVCache:
  """An empty cache for ``batch`` rows of up to ``max_length`` positions."""
  shape = (cfg.num_layers, batch, max_length, cfg.num_kv_heads, cfg.head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def param_shapes(cfg: config_lib.DecoderConfig) -> dict[str, Any]:
  """The shape of every parameter, as the nested dict ``init_params`` returns."""
  num_layers, width, head_dim = cfg.num_layers, cfg.hidden_size, cfg.head_dim
  q_width, kv_width, ffn = cfg.num_heads * head_dim, cfg.num_kv_heads * head_dim, cfg.intermediate_size
  layers = {
      'attn_norm': (num_layers, width),
      'wq': (num_layers, width, q_width),
      'wk': (num_layers, width, kv_width),
      'wv': (num_layers, width, kv_width),
      'wo': (num_layers, q_width, width),
      'mlp_norm': (num_layers, width),
      'w_gate': (num_layers, width, ffn),
      'w_up': (num_layers, width, ffn),
      'w_down': (num_layers, ffn, width),
  }
  if cfg.qk_norm:
    layers['q_norm'] = (num_layers, head_dim)
    layers['k_norm'] = (num_layers, head_dim)
  shapes: dict[str, Any] = {'embed': (cfg.vocab_size, width), 'layers': layers, 'final_norm': (width,)}
  if not cfg.tie_embeddings:
    shapes['lm_head'] = (width, cfg.vocab_size)
  return shapes


def check_params(cfg: config_lib.DecoderConfig, params: Params) -> None:
  """Raises ValueError naming every missing, extra or mis-shaped parameter."""
  expected = param_shapes(cfg)
  problems = []

  def walk(want: dict[str, Any], got: Any, prefix: str):
    if not isinstance(got, dict):
      problems.append(f'{prefix or "params"} is {type(got).__name__}, expected a dict')
      return
    for name in sorted(set(want) | set(got)):
      path = f'{prefix}{name}'
      if name not in got:
        problems.append(f'{path} missing')
      elif name not in want:
        problems.append(f'{path} unexpected')
      elif isinstance(want[name], dict):
        walk(want[name], got[name], f'{path}/')
      elif tuple(np.shape(got[name])) != want[name]:
        problems.append(f'{path} has shape {tuple(np.shape(got[name]))}, expected {want[name]}')

  walk(expected, params, '')
  if problems:
    raise ValueError(f'Decoder parameters do not match the {cfg.arch} config (tie_embeddings='
                     f'{cfg.tie_embeddings}, qk_norm={cfg.qk_norm}): ' + '; '.join(problems) + '.')


def init_params(cfg: config_lib.DecoderConfig, key: jax.Array, dtype=jnp.float32) -> Params:
  """Random parameters: matrices N(0, 0.02^2) (HF's initializer_range), norm weights 1."""
  shapes = param_shapes(cfg)

  def make(name: str, shape: tuple[int, ...], index: int):
    if 'norm' in name:
      return jnp.ones(shape, dtype)
    return (0.02 * jax.random.normal(jax.random.fold_in(key, index), shape, jnp.float32)).astype(dtype)

  names = sorted(shapes['layers'])
  params: Params = {
      'embed': make('embed', shapes['embed'], 0),
      'layers': {name: make(name, shapes['layers'][name], 10 + i) for i, name in enumerate(names)},
      'final_norm': make('final_norm', shapes['final_norm'], 1),
  }
  if 'lm_head' in shapes:
    params['lm_head'] = make('lm_head', shapes['lm_head'], 2)
  return params


def rope_inv_freq(cfg: config_lib.DecoderConfig) -> np.ndarray:
  """Inverse frequencies [hd/2] of RoPE with ``cfg.rope_theta`` and HF's rope_scaling ('linear', 'llama3')."""
  inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
  kind = config_lib.rope_type(cfg)
  scaling = cfg.rope_scaling or {}
  if kind == 'linear':
    inv_freq = inv_freq / float(scaling['factor'])
  elif kind == 'llama3':
    # HF transformers' _compute_llama3_parameters: long wavelengths divided by factor, short kept, a smooth mix between.
    factor = float(scaling['factor'])
    low_freq_factor = float(scaling['low_freq_factor'])
    high_freq_factor = float(scaling['high_freq_factor'])
    old_context = float(scaling['original_max_position_embeddings'])
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  return inv_freq.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray | jax.Array) -> jax.Array:
  """Rotates x [B, T, H, hd] by its positions [B, T] (HF rotate_half: dims i and i + hd/2 are a pair)."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)  # [B, T, hd/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  half = x.shape[-1] // 2
  x1 = x[..., :half].astype(jnp.float32)
  x2 = x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """HF LlamaRMSNorm / Qwen3RMSNorm over the last axis: statistics in float32, weight * x / rms."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return weight * normed.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention without repeating keys: q [B, T, Hq, hd], k/v [B, S, Hkv, hd], mask [B, T, S].

  Query head h reads key/value head h // (Hq / Hkv), as HF's repeat_kv. Returns [B, T, Hq * hd].
  """
  batch, length, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  grouped = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  scores = jnp.einsum('btkgd,bskd->bkgts', grouped, k, preferred_element_type=jnp.float32)
  scores = jnp.where(mask[:, None, None], scores * head_dim**-0.5, MASKED_LOGIT)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgts,bskd->btkgd', probs, v)
  return out.reshape(batch, length, num_heads * head_dim)


def _project_qkv(layer: Params, cfg: config_lib.DecoderConfig, x: jax.Array, positions: jax.Array,
                 inv_freq: np.ndarray):
  """Normed input -> RoPE'd queries [B, T, Hq, hd], keys and values [B, T, Hkv, hd]."""
  batch, length, _ = x.shape
  h = rms_norm(x, layer['attn_norm'], cfg.rms_norm_eps)
  q = (h @ layer['wq']).reshape(batch, length, cfg.num_heads, cfg.head_dim)
  k = (h @ layer['wk']).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
  v = (h @ layer['wv']).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    # Qwen3: per-head RMSNorm of q and k over head_dim, before RoPE.
    q = rms_norm(q, layer['q_norm'], cfg.rms_norm_eps)
    k = rms_norm(k, layer['k_norm'], cfg.rms_norm_eps)
  return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v


def _finish_layer(layer: Params, cfg: config_lib.DecoderConfig, x: jax.Array, attended: jax.Array) -> jax.Array:
  """Attention output projection and the SwiGLU MLP, both residual."""
  x = x + attended @ layer['wo']
  h = rms_norm(x, layer['mlp_norm'], cfg.rms_norm_eps)
  return x + (jax.nn.silu(h @ layer['w_gate']) * (h @ layer['w_up'])) @ layer['w_down']


def hidden_states(params: Params, cfg: config_lib.DecoderConfig, tokens: jax.Array, positions: jax.Array,
                  kv_cache: KVCache | None = None, mask: jax.Array | None = None
                  ) -> tuple[jax.Array, KVCache | None]:
  """Final-normed hidden states [B, T, D] and the updated cache; see ``forward``."""
  tokens = jnp.asarray(tokens)
  positions = jnp.asarray(positions, jnp.int32)
  if tokens.ndim != 2 or positions.shape != tokens.shape:
    raise ValueError(f'hidden_states: tokens {tokens.shape} and positions {positions.shape} must both be [B, T].')
  mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
  inv_freq = rope_inv_freq(cfg)
  x = jnp.take(params['embed'], tokens, axis=0)
  batch = tokens.shape[0]

  if kv_cache is None:
    # Keys are this call's tokens: visible when valid and not after the query.
    visible = mask[:, None, :] & (positions[:, None, :] <= positions[:, :, None])

    def layer_step(x, layer):
      q, k, v = _project_qkv(layer, cfg, x, positions, inv_freq)
      return _finish_layer(layer, cfg, x, attention(q, k, v, visible)), None

    x, _ = jax.lax.scan(layer_step, x, params['layers'])
    new_cache = None
  else:
    max_length = kv_cache.max_length
    # Slot s holds position s; a query sees slots up to its own position. Padding tokens are not written.
    visible = jnp.arange(max_length)[None, None, :] <= positions[:, :, None]
    write_at = jnp.where(mask, positions, max_length)  # Out of range: dropped by the scatter.
    rows = jnp.arange(batch)[:, None]

    def layer_step(carry, layer_and_index):
      x, cache_k, cache_v = carry
      layer, index = layer_and_index
      q, k, v = _project_qkv(layer, cfg, x, positions, inv_freq)
      # The whole cache rides in the carry so the scatter updates it in place (no per-step copy of [L, B, S, ...]).
      cache_k = cache_k.at[index, rows, write_at].set(k.astype(cache_k.dtype), mode='drop')
      cache_v = cache_v.at[index, rows, write_at].set(v.astype(cache_v.dtype), mode='drop')
      attended = attention(q, cache_k[index], cache_v[index], visible)
      return (_finish_layer(layer, cfg, x, attended), cache_k, cache_v), None

    (x, cache_k, cache_v), _ = jax.lax.scan(
        layer_step, (x, kv_cache.k, kv_cache.v), (params['layers'], jnp.arange(cfg.num_layers)))
    new_cache = KVCache(cache_k, cache_v)
  return rms_norm(x, params['final_norm'], cfg.rms_norm_eps), new_cache


def logits_from_hidden(params: Params, cfg: config_lib.DecoderConfig, hidden: jax.Array) -> jax.Array:
  """Float32 logits [..., V] of final-normed hidden states (embed.T when embeddings are tied)."""
  head = params['embed'].T if cfg.tie_embeddings else params['lm_head']
  return jnp.matmul(hidden, head, preferred_element_type=jnp.float32)


def forward(params: Params, cfg: config_lib.DecoderConfig, tokens: jax.Array, positions: jax.Array,
            kv_cache: KVCache | None = None, mask: jax.Array | None = None
            ) -> tuple[jax.Array, KVCache | None]:
  """Logits [B, T, V] (float32) of tokens [B, T] at positions [B, T], and the updated cache.

  Without a cache, token t attends to the tokens of its row that are valid (``mask``) and
  not at a later position: padding anywhere in a row is invisible. With a cache, this
  call's valid tokens are written to the slots of their positions and each token attends
  to the slots up to its own position (earlier calls' tokens included): prefill a right-
  padded batch at positions 0..T-1, then decode one token per row at its own position.
  Jit with ``cfg`` static: ``jax.jit(forward, static_argnames='cfg')``.
  """
  hidden, new_cache = hidden_states(params, cfg, tokens, positions, kv_cache, mask)
  return logits_from_hidden(params, cfg, hidden), new_cache


class StackedLayers(nnx.Module):
  """The decoder layers' weights, each stacked over layers on axis 0 (one ``nnx.Param`` per name)."""

  def __init__(self, arrays: dict[str, jax.Array]):
    for name, value in arrays.items():
      setattr(self, name, nnx.Param(jnp.asarray(value)))


class Decoder(nnx.Module):
  """The NNX view of a decoder's parameter dict; calls run ``forward`` on ``to_params()``.

  ``nnx.state(decoder, nnx.Param)`` has the dict's tree, so NNX optimizers and sharding
  work on it directly, and ``to_params`` / ``from_params`` convert without copying.
  """

  def __init__(self, cfg: config_lib.DecoderConfig, *, rngs: nnx.Rngs | None = None,
               params: Params | None = None, dtype=jnp.float32):
    if (rngs is None) == (params is None):
      raise ValueError('Decoder: pass exactly one of rngs= (random init) or params= (use Decoder.from_params).')
    if params is None:
      params = init_params(cfg, rngs.params(), dtype)
    check_params(cfg, params)
    self.cfg = cfg
    self.embed = nnx.Param(jnp.asarray(params['embed']))
    self.layers = StackedLayers(params['layers'])
    self.final_norm = nnx.Param(jnp.asarray(params['final_norm']))
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Param(jnp.asarray(params['lm_head']))

  @classmethod
  def from_params(cls, cfg: config_lib.DecoderConfig, params: Params) -> Decoder:
    """A decoder holding ``params`` (checked against ``cfg``)."""
    return cls(cfg, params=params)

  def to_params(self) -> Params:
    """The pure parameter dict (the arrays themselves, not copies)."""
    return nnx.to_pure_dict(nnx.state(self, nnx.Param))

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, kv_cache: KVCache | None = None,
               mask: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """``forward`` with these parameters; positions default to 0..T-1 in every row."""
    tokens = jnp.asarray(tokens)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return forward(self.to_params(), self.cfg, tokens, positions, kv_cache, mask)

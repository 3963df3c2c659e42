"""The decoder's architecture: one frozen, hashable config for Llama and Qwen3.

The config is a static argument of every jitted function of ``hieramas_jax.lm``, so it
must hash: ``rope_scaling`` is a dict (as in a Hugging Face config.json) and is hashed by
its sorted items.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ARCHITECTURES = ('llama', 'qwen3')
# HF rope_scaling types this decoder implements ('default' means none).
ROPE_TYPES = ('default', 'linear', 'llama3')
_LLAMA3_KEYS = ('factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings')


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shapes and constants of a Llama- or Qwen3-family decoder.

  Attributes:
    arch: 'llama' or 'qwen3'.
    vocab_size: rows of the embedding and columns of the LM head.
    hidden_size: model width D.
    num_layers: decoder layers L.
    num_heads: query heads Hq.
    num_kv_heads: key/value heads Hkv (grouped-query attention when < num_heads).
    head_dim: width of one head (Qwen3 sets it apart from hidden_size / num_heads).
    intermediate_size: SwiGLU hidden width F.
    rope_theta: RoPE base frequency (Llama 2: 1e4, SmolLM2: 1e5, Qwen3: 1e6).
    rope_scaling: None, or a dict as in HF config.json: {'rope_type': 'linear', 'factor': f} or
      {'rope_type': 'llama3', 'factor', 'low_freq_factor', 'high_freq_factor',
      'original_max_position_embeddings'}; the older key 'type' is accepted for 'rope_type'.
    rms_norm_eps: epsilon of every RMSNorm.
    tie_embeddings: the LM head is embed.T (no 'lm_head' parameter).
    qk_norm: Qwen3's per-head RMSNorm of queries and keys (over head_dim, before RoPE).
    max_position_embeddings: the longest sequence generation accepts.
  """

  arch: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rope_theta: float
  rope_scaling: dict[str, Any] | None = None
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 4096

  def __post_init__(self):
    if self.arch not in ARCHITECTURES:
      raise ValueError(f'DecoderConfig.arch={self.arch!r}: expected one of {ARCHITECTURES}.')
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                 'intermediate_size', 'max_position_embeddings'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'DecoderConfig.{name}={value!r}: expected a positive int.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'DecoderConfig: num_heads={self.num_heads} is not a multiple of num_kv_heads='
                       f'{self.num_kv_heads}; grouped-query attention needs whole groups.')
    if self.head_dim % 2:
      raise ValueError(f'DecoderConfig.head_dim={self.head_dim}: RoPE rotates pairs, use an even head_dim.')
    if not self.rope_theta > 0:
      raise ValueError(f'DecoderConfig.rope_theta={self.rope_theta!r}: expected a positive base frequency.')
    if not self.rms_norm_eps > 0:
      raise ValueError(f'DecoderConfig.rms_norm_eps={self.rms_norm_eps!r}: expected a positive epsilon.')
    rope_type(self)  # Validates rope_scaling.

  def __hash__(self):
    scaling = None if self.rope_scaling is None else tuple(sorted(self.rope_scaling.items()))
    return hash((*(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'rope_scaling'),
                 scaling))

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict; ``from_dict`` inverts it."""
    out = dataclasses.asdict(self)
    if self.rope_scaling is not None:
      out['rope_scaling'] = dict(self.rope_scaling)
    return out

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> DecoderConfig:
    """The config written by ``to_dict``; unknown keys are an error (they would be silently lost)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f'DecoderConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(names)}.')
    values = dict(values)
    if values.get('rope_scaling') is not None:
      values['rope_scaling'] = dict(values['rope_scaling'])
    return cls(**values)

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads


def rope_type(cfg: DecoderConfig) -> str:
  """'default', 'linear' or 'llama3' from ``cfg.rope_scaling``; raises on an unsupported or incomplete dict."""
  scaling = cfg.rope_scaling
  if scaling is None:
    return 'default'
  if not isinstance(scaling, dict):
    raise ValueError(f'DecoderConfig.rope_scaling={scaling!r}: expected None or a dict as in HF config.json.')
  kind = scaling.get('rope_type', scaling.get('type'))
  if kind not in ROPE_TYPES:
    raise ValueError(f'DecoderConfig.rope_scaling type {kind!r} is not supported: use one of {ROPE_TYPES} '
                     '(set rope_scaling=None for plain RoPE).')
  needed = {'default': (), 'linear': ('factor',), 'llama3': _LLAMA3_KEYS}[kind]
  missing = [key for key in needed if key not in scaling]
  if missing:
    raise ValueError(f'DecoderConfig.rope_scaling of type {kind!r} lacks {missing}.')
  return kind


def tiny(arch: str = 'qwen3', **overrides: Any) -> DecoderConfig:
  """A small config for tests: 2 layers, width 64, GQA (4 query / 2 key-value heads), vocab 259.

  The vocab fits a byte tokenizer (256 bytes + bos/eos/pad). Qwen3 has q/k norms and tied
  embeddings (as Qwen3-0.6B); Llama has an untied head. ``overrides`` replace any field.
  """
  if arch not in ARCHITECTURES:
    raise ValueError(f'tiny(arch={arch!r}): expected one of {ARCHITECTURES}.')
  values: dict[str, Any] = dict(
      arch=arch,
      vocab_size=259,
      hidden_size=64,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      intermediate_size=128,
      rope_theta=1e6 if arch == 'qwen3' else 1e4,
      rope_scaling=None,
      rms_norm_eps=1e-6 if arch == 'qwen3' else 1e-5,
      tie_embeddings=arch == 'qwen3',
      qk_norm=arch == 'qwen3',
      max_position_embeddings=1024,
  )
  values.update(overrides)
  return DecoderConfig(**values)

"""Model pools: which LLMs exist, where they are served, what they cost.

A pool is a list of :class:`ModelSpec`. It comes from config as a list of plain
dicts (``pool_from_config``); an entry that names a model of the paper's pool only
needs the fields it changes (endpoint, key variable, wire name), the price and
profile come from :data:`PAPER_POOL`. Validation happens once, before any call:
an empty pool, duplicate names, negative prices or a missing API-key variable are
reported with what to fix.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping, Sequence

from hieramas_jax.llm.base import ConfigError, Usage


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model of the pool.

  Attributes:
    name: the pool name (what plans and the selector use).
    base_url: OpenAI-compatible endpoint, or None for the simulator.
    api_key_env: environment variable holding the key; None for local servers
      that take no key (a dummy key is sent).
    price_in_per_m: USD per 1M prompt tokens.
    price_out_per_m: USD per 1M completion tokens.
    max_concurrency: most requests in flight to this model's endpoint.
    profile: a short description the selector embeds.
    served_name: the model id sent on the wire; defaults to ``name``.
  """

  name: str
  base_url: str | None = None
  api_key_env: str | None = None
  price_in_per_m: float = 0.0
  price_out_per_m: float = 0.0
  max_concurrency: int = 16
  profile: str = ""
  served_name: str | None = None

  @property
  def wire_name(self) -> str:
    return self.served_name or self.name

  def cost(self, usage: Usage) -> float:
    """USD of one call with this usage."""
    return (usage.prompt_tokens * self.price_in_per_m + usage.completion_tokens * self.price_out_per_m) / 1e6


# The pool of the HieraMAS paper. Prices are USD per 1M tokens, list prices of
# late 2025 (OpenAI pricing page for the GPT models; DeepSeek API docs for
# V3.2; OpenRouter listings for the open-weights models, whose price depends on
# the provider). They are approximate: override them in config before reporting
# real costs. base_url is None: the default is the offline simulator.
PAPER_POOL: tuple[ModelSpec, ...] = (
    ModelSpec("Qwen3-8B", price_in_per_m=0.035, price_out_per_m=0.138, max_concurrency=32,
              profile="Qwen3 8B: small open model, cheap, fair at math with reasoning, weaker on broad knowledge."),
    ModelSpec("Qwen3-Next-80B-A3B", price_in_per_m=0.10, price_out_per_m=0.80, max_concurrency=32,
              profile="Qwen3-Next 80B-A3B: sparse MoE, strong at math and code for its price, good knowledge."),
    ModelSpec("Llama-3.1-8B", price_in_per_m=0.02, price_out_per_m=0.03, max_concurrency=32,
              profile="Llama 3.1 8B Instruct: very cheap and fast, weak at multi-step math, fair general knowledge."),
    ModelSpec("DeepSeek-V3.2", price_in_per_m=0.28, price_out_per_m=0.42, max_concurrency=32,
              profile="DeepSeek V3.2: large MoE, strong at math, code and knowledge; mid price, slower."),
    ModelSpec("Gemma-3-27B", price_in_per_m=0.09, price_out_per_m=0.16, max_concurrency=32,
              profile="Gemma 3 27B: mid-size open model, good general knowledge and writing, average at math."),
    ModelSpec("GPT-5-nano", price_in_per_m=0.05, price_out_per_m=0.40, max_concurrency=32,
              profile="GPT-5 nano: smallest GPT-5 reasoning model, cheap, good at short math, long outputs."),
    ModelSpec("GPT-5-mini", price_in_per_m=0.25, price_out_per_m=2.00, max_concurrency=32,
              profile="GPT-5 mini: strong reasoning model, very good at math, code and knowledge; costly outputs."),
    ModelSpec("GPT-4o-mini", price_in_per_m=0.15, price_out_per_m=0.60, max_concurrency=32,
              profile="GPT-4o mini: fast non-reasoning model, good knowledge and instruction following, fair math."),
)

_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


def paper_pool_by_name() -> dict[str, ModelSpec]:
  return {m.name: m for m in PAPER_POOL}


def spec_from_dict(entry: Mapping[str, Any]) -> ModelSpec:
  """One ModelSpec from a config dict; a paper-pool name fills the fields left out."""
  if "name" not in entry:
    raise ConfigError(f"model entry {dict(entry)!r} has no 'name'; every pool entry needs one")
  unknown = set(entry) - _FIELDS
  if unknown:
    raise ConfigError(f"model entry {entry['name']!r} has unknown field(s) {sorted(unknown)}; "
                      f"allowed fields: {sorted(_FIELDS)}")
  base = paper_pool_by_name().get(entry["name"])
  if base is None:
    missing = {"price_in_per_m", "price_out_per_m"} - set(entry)
    if missing:
      raise ConfigError(f"model {entry['name']!r} is not in the paper pool, so its config must give "
                        f"{sorted(missing)} (USD per 1M tokens)")
    base = ModelSpec(name=entry["name"])
  return dataclasses.replace(base, **dict(entry))


def validate_pool(specs: Sequence[ModelSpec], *, check_keys: bool = True,
                  environ: Mapping[str, str] | None = None) -> None:
  """Raises ConfigError describing the first problem of a pool, before any call.

  Args:
    specs: the pool.
    check_keys: whether models with an ``api_key_env`` need that variable set
      (True for real endpoints; the simulator needs no key).
    environ: the environment to check (defaults to ``os.environ``).
  """
  env = os.environ if environ is None else environ
  if not specs:
    raise ConfigError("the model pool is empty; configure at least one model")
  seen: set[str] = set()
  for s in specs:
    if not s.name:
      raise ConfigError("a model of the pool has an empty name")
    if s.name in seen:
      raise ConfigError(f"model {s.name!r} appears twice in the pool; names must be unique")
    seen.add(s.name)
    if s.price_in_per_m < 0 or s.price_out_per_m < 0:
      raise ConfigError(f"model {s.name!r} has a negative price "
                        f"({s.price_in_per_m}, {s.price_out_per_m} USD per 1M tokens)")
    if s.max_concurrency < 1:
      raise ConfigError(f"model {s.name!r} has max_concurrency={s.max_concurrency}; it must be >= 1")
  if check_keys:
    missing = sorted({s.api_key_env for s in specs if s.api_key_env and not env.get(s.api_key_env)})
    if missing:
      users = {v: sorted(s.name for s in specs if s.api_key_env == v) for v in missing}
      detail = "; ".join(f"{v} (for {', '.join(users[v])})" for v in missing)
      raise ConfigError(f"API key environment variable(s) not set: {detail}. Export them, or set "
                        "api_key_env to None for a local server that needs no key")


def pool_from_config(entries: Iterable[Mapping[str, Any]], *, check_keys: bool = True,
                     environ: Mapping[str, str] | None = None) -> list[ModelSpec]:
  """A validated pool from config dicts (see ``spec_from_dict``)."""
  specs = [spec_from_dict(e) for e in entries]
  validate_pool(specs, check_keys=check_keys, environ=environ)
  return specs


def paper_pool(names: Sequence[str] | None = None, **overrides: Any) -> list[ModelSpec]:
  """The paper's pool (or the named part of it), each spec updated with ``overrides``."""
  by_name = paper_pool_by_name()
  names = list(by_name) if names is None else list(names)
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ConfigError(f"not in the paper pool: {unknown}; known: {sorted(by_name)}")
  return [dataclasses.replace(by_name[n], **overrides) for n in names]

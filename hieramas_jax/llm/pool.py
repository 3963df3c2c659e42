"""Model pools: which LLMs exist, where they are served, what they cost.

A pool is a list of :class:`ModelSpec`. It comes from config as a list of plain
dicts, parsed in one place (``merge_pool``, ``pool_from_config``); an entry that
names a model of the paper's pool only needs the fields it changes (endpoint, key
variable, wire name), the price and profile come from :data:`PAPER_POOL`; any
other model must give its prices (0 for a free local model). Validation happens once, before any call:
an empty pool, duplicate names, negative prices, a missing API-key variable or a
bad request option (``max_tokens_param``, ``fixed_temperature``, ``extra_body``)
are reported with what to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

from hieramas_jax.llm.base import ConfigError, Usage


# The names an endpoint takes for the cap on completion tokens: the legacy one (vLLM,
# SGLang, Ollama, llama.cpp, OpenRouter, OpenAI's GPT-4o family) and the one that
# OpenAI's reasoning models (GPT-5 family, o-series) require.
MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")

# Request fields that the backend sets itself, with what to use instead of extra_body.
_RESERVED_BODY_FIELDS = {
    "model": "the model id is served_name (or name)",
    "messages": "the messages come from the plan",
    "stream": "the backend reads whole answers",
    "n": "one completion per call; repeated samples are separate calls (sample_index)",
    "max_tokens": "the cap is the call's max_tokens (llm.max_tokens), sent under max_tokens_param",
    "max_completion_tokens": "the cap is the call's max_tokens (llm.max_tokens), sent under max_tokens_param",
    "temperature": "set fixed_temperature",
}


def _plain_json(value: Any, where: str) -> Any:
  """``value`` as plain JSON data (dict, list, str, number, bool, None); ConfigError naming ``where`` if it is not."""
  if hasattr(value, "to_dict") and not isinstance(value, Mapping):  # an ml_collections ConfigDict
    value = value.to_dict()
  if isinstance(value, Mapping):
    out = {}
    for key, item in value.items():
      if not isinstance(key, str):
        raise ConfigError(f"{where}: key {key!r} is not a string (JSON object keys are strings)")
      out[key] = _plain_json(item, f"{where}[{key!r}]")
    return out
  if isinstance(value, (list, tuple)):
    return [_plain_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
  if value is None or isinstance(value, (str, bool, int)):
    return value
  if isinstance(value, float) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
    if not math.isfinite(float(value)):
      raise ConfigError(f"{where}={value!r}; JSON has no NaN or infinity")
    return int(value) if isinstance(value, numbers.Integral) else float(value)
  raise ConfigError(f"{where}={value!r} is a {type(value).__name__}; request fields must be JSON: strings, "
                    "numbers, booleans, null, lists and objects")


def _freeze(value: Any) -> Any:
  if isinstance(value, dict):
    return RequestBody(value)
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


class RequestBody(Mapping[str, Any]):
  """A read-only JSON object of request fields: hashable, picklable, equal to the dict it holds.

  Nested objects are RequestBody and lists are tuples, so a spec's fields cannot
  change after validation; ``to_dict()`` gives a fresh plain dict to send.
  """

  __slots__ = ("_items", "_json")

  def __init__(self, fields: Mapping[str, Any] | None = None, *, where: str = "extra_body"):
    plain = _plain_json({} if fields is None else fields, where)
    if not isinstance(plain, dict):
      raise ConfigError(f"{where}={fields!r}; it must be a mapping of request field -> value, "
                        "e.g. {'reasoning_effort': 'minimal'}")
    self._json = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    self._items = {key: _freeze(plain[key]) for key in sorted(plain)}

  def __getitem__(self, key: str) -> Any:
    return self._items[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __hash__(self) -> int:
    return hash(self._json)

  def __eq__(self, other: Any) -> bool:
    if isinstance(other, RequestBody):
      return self._json == other._json
    if isinstance(other, Mapping):
      try:
        return self._json == RequestBody(other)._json
      except ConfigError:
        return False
    return NotImplemented

  def __repr__(self) -> str:
    return repr(self.to_dict())

  def __reduce__(self):
    return (RequestBody, (self.to_dict(),))

  def to_dict(self) -> dict[str, Any]:
    """A new plain dict (lists as lists) of the fields, keys sorted."""
    return json.loads(self._json)


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
    max_tokens_param: the request field the call's token cap is sent under:
      "max_tokens" (most servers) or "max_completion_tokens" (required by OpenAI's
      GPT-5 family and o-series, which answer ``max_tokens`` with HTTP 400
      "Unsupported parameter"). For reasoning models the cap counts the hidden
      reasoning tokens too, so a small cap can end a reply with no text
      (finish_reason "length").
    fixed_temperature: None sends the call's temperature (llm.temperature); a
      number is sent instead of it on every call of this model. 1.0 for OpenAI's
      GPT-5 family and o-series, which answer any other value with HTTP 400
      "Unsupported value: 'temperature' ... Only the default (1) value is supported".
    extra_body: further request fields sent on every call of this model, e.g.
      ``{"reasoning_effort": "minimal"}`` (OpenAI reasoning models: minimal, low,
      medium (the default), high) or OpenRouter's ``{"provider": {"order":
      ["openai"]}}``; read-only once the spec is built. The fields the backend
      sets itself (model, messages, stream, n, max_tokens, max_completion_tokens,
      temperature) are refused: use the options above.
    backend: which backend serves this model: 'sim', 'openai' or 'local' (a
      model file run in this process, ``hieramas_jax.lm``); None: the run's
      ``llm.backend``. A pool may mix backends (``llm.routing``).
    path: for backend='local', a .gguf file or a Hugging Face model directory.
    dtype: for backend='local', the dtype the weights are computed in:
      'float32' or 'bfloat16'.

  The paper pool's GPT-5 entries follow OpenAI's rules (max_completion_tokens,
  temperature 1, no extra fields, so OpenAI's default reasoning effort) because
  both endpoints the paper's models are reached through accept that request:
  OpenAI's answers ``max_tokens`` and temperature != 1 with HTTP 400, while
  OpenRouter takes ``max_completion_tokens`` as well as ``max_tokens`` (both are
  in its request schema) and temperature 1 is its default. The paper's code sent
  ``max_tokens`` and temperature 0.2 to every model through OpenRouter, which
  drops a parameter the chosen model does not support instead of answering 400
  (OpenRouter API reference, "Non-standard parameters"); as GPT-5 takes only
  temperature 1, the paper's GPT-5 calls most likely ran at 1 too (not verified
  against OpenRouter's logs). To send exactly the paper's request, set
  ``max_tokens_param="max_tokens"`` and ``fixed_temperature=None`` in the entry.
  """

  name: str
  base_url: str | None = None
  api_key_env: str | None = None
  price_in_per_m: float = 0.0
  price_out_per_m: float = 0.0
  max_concurrency: int = 16
  profile: str = ""
  served_name: str | None = None
  max_tokens_param: str = "max_tokens"
  fixed_temperature: float | None = None
  extra_body: Mapping[str, Any] = dataclasses.field(default_factory=RequestBody)
  backend: str | None = None
  path: str | None = None
  dtype: str = "float32"

  def __post_init__(self):
    where = f"model {self.name!r}"
    if not isinstance(self.max_tokens_param, str) or self.max_tokens_param not in MAX_TOKENS_PARAMS:
      raise ConfigError(f"{where}: max_tokens_param={self.max_tokens_param!r}; choose 'max_tokens' (most servers) "
                        "or 'max_completion_tokens' (OpenAI's GPT-5 family and o-series)")
    t = self.fixed_temperature
    if t is not None:
      if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(float(t)) or not 0 <= t <= 2:
        raise ConfigError(f"{where}: fixed_temperature={t!r}; it must be None (send llm.temperature) or a number "
                          "in [0, 2] (1.0 for OpenAI's GPT-5 family and o-series)")
      object.__setattr__(self, "fixed_temperature", float(t))
    body = self.extra_body
    if not isinstance(body, RequestBody):
      if body is not None and not isinstance(body, Mapping) and not hasattr(body, "to_dict"):
        raise ConfigError(f"{where}: extra_body={body!r} is a {type(body).__name__}; it must be a mapping of "
                          "request field -> value, e.g. {'reasoning_effort': 'minimal'}")
      body = RequestBody(body, where=f"{where}: extra_body")
      object.__setattr__(self, "extra_body", body)
    reserved = [k for k in body if k in _RESERVED_BODY_FIELDS]
    if reserved:
      raise ConfigError(f"{where}: extra_body sets {', '.join(map(repr, reserved))}, which the backend sets "
                        f"itself: " + "; ".join(f"{k}: {_RESERVED_BODY_FIELDS[k]}" for k in reserved))

  @property
  def wire_name(self) -> str:
    return self.served_name or self.name

  def cost(self, usage: Usage) -> float:
    """USD of one call with this usage."""
    return (usage.prompt_tokens * self.price_in_per_m + usage.completion_tokens * self.price_out_per_m) / 1e6

  def request_options(self) -> dict[str, Any]:
    """The request options that differ from the defaults (what changes the request; empty for most models)."""
    options: dict[str, Any] = {}
    if self.max_tokens_param != "max_tokens":
      options["max_tokens_param"] = self.max_tokens_param
    if self.fixed_temperature is not None:
      options["fixed_temperature"] = self.fixed_temperature
    if self.extra_body:
      options["extra_body"] = self.extra_body.to_dict()
    return options

  def wire_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters of one call as this model's endpoint takes them.

    The token cap (given as ``max_tokens`` or ``max_completion_tokens``) is sent
    under ``max_tokens_param`` and a fixed temperature replaces the call's. The
    ``extra_body`` fields are not included (the backend sends them as extra body).

    Raises:
      ConfigError: both cap names given with different values.
    """
    request = dict(params)
    caps = {k: request.pop(k) for k in MAX_TOKENS_PARAMS if k in request}
    if len(set(caps.values())) > 1:
      raise ConfigError(f"model {self.name!r}: the call gives max_tokens={caps['max_tokens']!r} and "
                        f"max_completion_tokens={caps['max_completion_tokens']!r}; give the cap once")
    if caps:
      request[self.max_tokens_param] = next(iter(caps.values()))
    if self.fixed_temperature is not None:
      request["temperature"] = self.fixed_temperature
    return request


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
              max_tokens_param="max_completion_tokens", fixed_temperature=1.0,
              profile="GPT-5 nano: smallest GPT-5 reasoning model, cheap, good at short math, long outputs."),
    ModelSpec("GPT-5-mini", price_in_per_m=0.25, price_out_per_m=2.00, max_concurrency=32,
              max_tokens_param="max_completion_tokens", fixed_temperature=1.0,
              profile="GPT-5 mini: strong reasoning model, very good at math, code and knowledge; costly outputs."),
    ModelSpec("GPT-4o-mini", price_in_per_m=0.15, price_out_per_m=0.60, max_concurrency=32,
              profile="GPT-4o mini: fast non-reasoning model, good knowledge and instruction following, fair math."),
)

_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}
# Generation parameters written into a pool entry: the per-model option that does their job.
_FIELD_HINTS = {
    "temperature": "fixed_temperature (llm.temperature is the run's temperature)",
    "max_tokens": "max_tokens_param to name the field the cap is sent under (llm.max_tokens is the cap)",
    "max_completion_tokens": "max_tokens_param='max_completion_tokens' (llm.max_tokens is the cap)",
    "reasoning_effort": "extra_body={'reasoning_effort': ...}",
}


def paper_pool_by_name() -> dict[str, ModelSpec]:
  return {m.name: m for m in PAPER_POOL}


def check_entry_fields(entry: Mapping[str, Any]) -> None:
  """ConfigError unless a config pool entry has a 'name' and only ModelSpec fields (naming the likely one)."""
  if "name" not in entry:
    raise ConfigError(f"model entry {dict(entry)!r} has no 'name'; every pool entry needs one")
  unknown = sorted(set(entry) - _FIELDS)
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, sorted(_FIELDS), n=1)
      if key in _FIELD_HINTS:
        hints.append(f"{key!r}: use {_FIELD_HINTS[key]}")
      elif close:
        hints.append(f"{key!r}: did you mean {close[0]!r}?")
    raise ConfigError(f"model entry {entry['name']!r} has unknown field(s) {unknown}"
                      + (f" ({'; '.join(hints)})" if hints else "") + f"; allowed fields: {sorted(_FIELDS)}")


def spec_from_dict(entry: Mapping[str, Any], base: ModelSpec | None = None) -> ModelSpec:
  """One ModelSpec from a config pool entry: ``base`` with the entry's fields.

  ``base`` defaults to the paper pool's model of that name. A model that neither
  knows must give its prices: a price left out would make it silently free.
  """
  check_entry_fields(entry)
  name = entry["name"]
  base = base or paper_pool_by_name().get(name)
  if base is None:
    missing = sorted({"price_in_per_m", "price_out_per_m"} - set(entry))
    if missing:
      raise ConfigError(f"model {name!r} is not in the paper pool, so its entry must give {missing} (USD per 1M "
                        "tokens; 0 for a free local model), e.g. {'name': " + repr(name) +
                        ", 'price_in_per_m': 0.1, 'price_out_per_m': 0.4}")
    base = ModelSpec(name=name)
  return dataclasses.replace(base, **dict(entry))


def merge_pool(specs: Sequence[ModelSpec], entries: Iterable[Mapping[str, Any]]) -> list[ModelSpec]:
  """``specs`` with config pool entries merged in by name (``spec_from_dict``); a new name is appended.

  The one parser of pool entries: the paper pool with ``llm.models`` overrides
  (``specs`` = PAPER_POOL) and a pool of exactly ``llm.models`` (``specs`` empty)
  both come from here. An entry names each model once.
  """
  by_name = {s.name: s for s in specs}
  seen: set[str] = set()
  for entry in entries:
    if hasattr(entry, "to_dict") and not isinstance(entry, Mapping):  # an ml_collections ConfigDict
      entry = entry.to_dict()
    if not isinstance(entry, Mapping):
      raise ConfigError(f"model pool entry {entry!r} is a {type(entry).__name__}; each entry is a dict such as "
                        "{'name': 'Qwen3-8B', 'base_url': 'http://localhost:8000/v1'}")
    check_entry_fields(entry)
    name = entry["name"]
    if name in seen:
      raise ConfigError(f"model {name!r} appears twice in the pool entries; give each model one entry")
    seen.add(name)
    by_name[name] = spec_from_dict(entry, by_name.get(name))
  return list(by_name.values())


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
    prices = (s.price_in_per_m, s.price_out_per_m)
    if any(isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) for p in prices):
      raise ConfigError(f"model {s.name!r} has prices {prices!r}; give price_in_per_m and price_out_per_m as "
                        "numbers (USD per 1M tokens)")
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


def pool_from_config(entries: Iterable[Mapping[str, Any]], *, start_from: Sequence[ModelSpec] = (),
                     check_keys: bool = True, environ: Mapping[str, str] | None = None) -> list[ModelSpec]:
  """A validated pool: ``start_from`` (e.g. PAPER_POOL) with the config entries merged in (``merge_pool``)."""
  specs = merge_pool(start_from, entries)
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

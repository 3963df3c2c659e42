"""The ``local`` LLM backend: model files run in this process, concurrent calls batched.

Pool entries ``backend="local", path=<.gguf file or HF dir>, dtype="float32"|"bfloat16"``
are served by :class:`LocalBackend` behind the same async interface as the
simulator and OpenAI-compatible endpoints. Each file is loaded once, whatever
number of pool names point at it (e.g. one model under several fixed
temperatures). Calls to one file are queued; a worker thread collects them for a
few milliseconds, or until a batch is full, and runs them as one batched
generation (static batching: a batch holds calls of equal temperature and top_p;
each row stops on its own and is cut to its own ``max_tokens``).

A call is shaped like an OpenAI chat request: the messages go through the
tokenizer's chat template, ``max_tokens`` (or ``max_completion_tokens``),
``temperature``, ``top_p``, ``stop`` and ``seed`` are honoured, and the pool
entry's ``fixed_temperature`` replaces the call's. Tokens are counted exactly
with the model's own tokenizer: ``prompt_tokens`` are the templated prompt's
tokens, ``completion_tokens`` the tokens generated (the end-of-sequence token
included when the model emitted it, as it was generated and paid for in compute;
tokens after a matched ``stop`` string are not counted). The cost comes from the
entry's prices (0 is allowed for local models). ``finish_reason`` is 'stop' (an
end-of-sequence token or a stop string) or 'length'.

Sampling keys derive from the request alone (model name, prompt, generation
parameters, seed or sample index), never from the batch a call lands in, so a
repeated request gives the same answer: the response cache
(``llm.cache.CachedBackend``) replays exactly what a new call would answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Collection, Mapping, Sequence

from hieramas_jax.llm.base import ConfigError, Message, Response, UnknownModelError, Usage, error_response
from hieramas_jax.llm.pool import MAX_TOKENS_PARAMS, ModelSpec
from hieramas_jax.llm.routing import LOCAL_DTYPES, SMOLLM2_HINT
from hieramas_jax.lm.batching import BatchStats, Batcher, Completion, GenerateFn, Pending  # noqa: F401  (re-exported)

# Request fields a local call takes besides the token cap; anything else is refused in words.
_ACCEPTED_PARAMS = ("temperature", "top_p", "stop", "seed", "n") + MAX_TOKENS_PARAMS
MAX_STOP_STRINGS = 4  # OpenAI's limit


@dataclasses.dataclass(frozen=True)
class LocalModel:
  """A loaded model: decoder config, parameters (pure dict) and tokenizer.

  Attributes:
    config: the ``DecoderConfig``.
    params: the parameter dict of ``hieramas_jax.lm.decoder``.
    tokenizer: ``encode``, ``decode``, ``apply_chat_template``, ``eos_ids``.
    source: what these weights are (resolved path, dtype, file size and time):
      part of the response cache key, so a changed file is a cache miss.
  """

  config: Any
  params: Any
  tokenizer: Any
  source: str


def file_signature(path: str | os.PathLike[str]) -> str:
  """Path, size and modification time of a file or a directory's files (what a cache key needs of them)."""
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.isdir(path):
    size, mtime = 0, 0
    for root, _, names in os.walk(path):
      for name in names:
        stat = os.stat(os.path.join(root, name))
        size, mtime = size + stat.st_size, max(mtime, stat.st_mtime_ns)
  else:
    stat = os.stat(path)
    size, mtime = stat.st_size, stat.st_mtime_ns
  return f"{path}|size={size}|mtime_ns={mtime}"


def load_local_model(path: str | os.PathLike[str], dtype: str = "float32") -> LocalModel:
  """Loads a .gguf file, a Hugging Face directory (``lm.weights.load_model``) or a trained leader folder.

  A leader folder is what ``launch.train_leader`` writes (``lm.leader_export``).

  Raises:
    ConfigError: the path does not exist or the dtype is unknown (one line with the fix).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hieramas_jax.lm import leader_export  # pylint: disable=g-import-not-at-top
  from hieramas_jax.lm import weights  # pylint: disable=g-import-not-at-top

  if dtype not in LOCAL_DTYPES:
    raise ConfigError(f"dtype={dtype!r}; choose 'float32' or 'bfloat16'")
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise ConfigError(f"local model path {path!r} does not exist; {SMOLLM2_HINT}")
  load = leader_export.load_leader if leader_export.is_leader_dir(path) else weights.load_model
  config, params, tokenizer = load(path, jnp.dtype(dtype))
  return LocalModel(config, params, tokenizer, f"{file_signature(path)}|dtype={dtype}")


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """One call's generation settings, parsed and checked."""

  max_tokens: int | None  # None: up to the model's context
  temperature: float
  top_p: float
  stop: tuple[str, ...]
  seed: int | None

  def key_fields(self) -> dict[str, Any]:
    """The fields that shape a sample besides the draw (the seed is the draw: ``request_seed``)."""
    fields = dataclasses.asdict(self)
    del fields["seed"]
    return fields


def parse_params(params: Mapping[str, Any]) -> GenerationRequest:
  """The generation settings of a call's parameters (after the entry's ``wire_params``).

  Raises:
    ValueError: a parameter the local backend does not take, or a bad value (the
      message names it and the accepted form).
  """
  unknown = sorted(set(params) - set(_ACCEPTED_PARAMS))
  if unknown:
    raise ValueError(f"the local backend does not take parameter(s) {unknown}; it takes {sorted(_ACCEPTED_PARAMS)}")
  caps = [params[k] for k in MAX_TOKENS_PARAMS if params.get(k) is not None]
  max_tokens = caps[0] if caps else None
  if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
    raise ValueError(f"max_tokens={max_tokens!r}; it must be an integer >= 1")
  temperature = params.get("temperature", 1.0)
  temperature = 1.0 if temperature is None else temperature
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
    raise ValueError(f"temperature={temperature!r}; it must be a number in [0, 2]")
  top_p = params.get("top_p", 1.0)
  top_p = 1.0 if top_p is None else top_p
  if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p!r}; it must be a number in (0, 1]")
  stop = params.get("stop")
  stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
  if (not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop)
      or len(stop) > MAX_STOP_STRINGS):
    raise ValueError(f"stop={params.get('stop')!r}; give a non-empty string or a list of at most "
                     f"{MAX_STOP_STRINGS} non-empty strings")
  seed = params.get("seed")
  if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
    raise ValueError(f"seed={seed!r}; it must be an integer")
  n = params.get("n", 1)
  if n not in (None, 1):
    raise ValueError(f"n={n!r}; one completion per call (ask again with another sample_index/seed)")
  return GenerationRequest(max_tokens, float(temperature), float(top_p), tuple(stop), seed)


def request_seed(model: str, prompt: Sequence[int], request: GenerationRequest, sample_index: int) -> int:
  """A 64-bit sampling seed from everything that shapes the answer (never from the batch)."""
  payload = json.dumps({"model": model, "prompt": list(prompt), "request": request.key_fields(),
                        "draw": request.seed if request.seed is not None else int(sample_index)},
                       sort_keys=True, separators=(",", ":"))
  return int.from_bytes(hashlib.blake2b(payload.encode(), digest_size=8).digest(), "little")


def jax_generate(model: LocalModel, prompts: list[list[int]], *, seeds: Sequence[int], max_new_tokens: int,
                 temperature: float, top_p: float, stop_ids: Sequence[int]) -> Any:
  """Batched generation with ``lm.generate.generate``, one sampling key per row (from its seed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hieramas_jax.lm import generate  # pylint: disable=g-import-not-at-top

  base = jax.random.PRNGKey(0)
  keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(base, s >> 32), s & 0xFFFFFFFF) for s in seeds])
  return generate.generate(model.params, model.config, prompts, key=keys, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, stop_ids=tuple(stop_ids))


class LocalBackend:
  """Local model files behind the async Backend interface, with batched generation.

  Args:
    pool: the local entries (``backend='local'``, ``path``, ``dtype``); prices
      come from each entry (0 allowed). Each distinct (path, dtype) is loaded once.
    models: already loaded models by entry ``path`` (tests, a leader just
      trained); entries whose path is not here are loaded from disk.
    generate_fn: the batched generation function (default ``jax_generate``);
      called as ``fn(model, prompts, seeds=..., max_new_tokens=..., temperature=...,
      top_p=..., stop_ids=...)`` and returns rows of ``tokens`` and ``finish_reasons``.
    max_batch: most calls in one generation.
    batch_wait_s: how long a batch waits for more calls after its first one.

  Raises:
    ConfigError: an entry without a path, an unknown dtype, a path that does not
      exist, duplicate names, or a file that cannot be loaded (one line each).
  """

  def __init__(self, pool: Sequence[ModelSpec], *, models: Mapping[str, LocalModel] | None = None,
               generate_fn: GenerateFn = jax_generate, max_batch: int = 8, batch_wait_s: float = 0.005):
    if max_batch < 1:
      raise ConfigError(f"max_batch={max_batch}; it must be >= 1")
    if batch_wait_s < 0:
      raise ConfigError(f"batch_wait_s={batch_wait_s}; it must be >= 0")
    models = dict(models or {})
    self.specs: dict[str, ModelSpec] = {}
    self._batchers: dict[tuple[str, str], Batcher] = {}
    self._batcher_of: dict[str, Batcher] = {}
    for spec in pool:
      if spec.name in self.specs:
        raise ConfigError(f"model {spec.name!r} appears twice in the local pool; names must be unique")
      if not spec.path:
        raise ConfigError(f"model {spec.name!r}: backend='local' needs path=<a .gguf file or a Hugging Face model "
                          f"directory>; {SMOLLM2_HINT}")
      self.specs[spec.name] = spec
      where = spec.path if spec.path in models else os.path.abspath(os.path.expanduser(spec.path))
      key = (where, spec.dtype)
      if key not in self._batchers:
        model = models.get(spec.path)
        if model is None:
          try:
            model = load_local_model(spec.path, spec.dtype)
          except ConfigError as e:
            raise ConfigError(f"model {spec.name!r}: {e}") from None
          except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"model {spec.name!r}: cannot load {spec.path!r} ({type(e).__name__}: {e}); give a "
                              f".gguf file or a Hugging Face model directory of a Llama or Qwen3 model") from e
        self._batchers[key] = Batcher(model, generate_fn, max_batch=max_batch, wait_s=batch_wait_s)
      self._batcher_of[spec.name] = self._batchers[key]

  def known_models(self) -> Collection[str]:
    return self.specs.keys()

  def model(self, name: str) -> LocalModel:
    """The loaded model behind pool name ``name``."""
    return self._batcher(name).model

  def _batcher(self, name: str) -> Batcher:
    batcher = self._batcher_of.get(name)
    if batcher is None:
      raise UnknownModelError(f"unknown model {name!r}; this backend serves {sorted(self.specs)}")
    return batcher

  def stats(self) -> dict[str, BatchStats]:
    """Batching figures per loaded model, keyed by its source."""
    return {b.model.source: b.stats for b in self._batchers.values()}

  def cache_identity(self, model: str) -> dict[str, Any]:
    """What decides the answers besides the call: the weights (file signature, dtype) and request options."""
    spec = self.specs[model]
    identity: dict[str, Any] = {"backend": "local", "source": self._batcher(model).model.source}
    options = spec.request_options()
    if options:
      identity["request_options"] = options
    return identity

  def prompt_tokens(self, model: str, messages: Sequence[Message]) -> list[int]:
    """The tokens a call's messages are fed as (the tokenizer's chat template, generation prompt added)."""
    tokenizer = self._batcher(model).model.tokenizer
    chat = [{"role": str(m.get("role", "")), "content": str(m.get("content") or "")} for m in messages]
    return list(tokenizer.encode(tokenizer.apply_chat_template(chat, add_generation_prompt=True)))

  def __repr__(self) -> str:
    return f"LocalBackend(models={sorted(self.specs)}, files={len(self._batchers)})"

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    batcher = self._batcher(model)
    spec = self.specs[model]
    start = time.perf_counter()
    try:
      request = parse_params(spec.wire_params(params))
      prompt = self.prompt_tokens(model, messages)
    except (ValueError, ConfigError) as e:
      return error_response(model, f"bad request: {e}", latency=time.perf_counter() - start)
    context = int(batcher.model.config.max_position_embeddings)
    if len(prompt) >= context:
      return error_response(model, f"the prompt has {len(prompt)} tokens, more than the model's context of "
                            f"{context} allows; shorten the messages", latency=time.perf_counter() - start)
    room = context - len(prompt)  # as OpenAI-compatible servers do: no cap means up to the context's end
    max_new = room if request.max_tokens is None else min(request.max_tokens, room)
    future: concurrent.futures.Future = concurrent.futures.Future()
    batcher.submit(Pending(prompt, max_new, request, request_seed(model, prompt, request, sample_index), future))
    try:
      done: Completion = await asyncio.wrap_future(future)
    except Exception as e:  # pylint: disable=broad-except  # a failed generation is an error answer, never a raise
      return error_response(model, f"local generation failed: {type(e).__name__}: {e}",
                            latency=time.perf_counter() - start)
    usage = Usage(done.prompt_tokens, done.completion_tokens)
    return Response(model=model, text=done.text, usage=usage, cost=spec.cost(usage),
                    latency=time.perf_counter() - start, finish_reason=done.finish_reason)

  def close(self) -> None:
    """Stops the worker threads (a later call starts them again)."""
    for batcher in self._batchers.values():
      batcher.close()

  async def aclose(self) -> None:
    await asyncio.to_thread(self.close)

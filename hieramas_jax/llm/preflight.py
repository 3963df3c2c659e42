"""A preflight check: does every model of a run answer, before the run spends anything?

``preflight(backend, models)`` sends one tiny real request per distinct model, all
in parallel and past the response cache, and raises :class:`EndpointError` with
one line per failing model (its name, its base URL and the cause in words) within
``timeout_s``. A dead port, a wrong key or a misspelled served name thus stops a
run in seconds with a message saying what to fix, instead of turning every call
of every episode into an error record.

Backends without endpoints (the in-process simulator) only have their model
names checked. A backend takes part by having ``async probe(model, *,
timeout_s) -> Failure | None`` and ``base_url(model)`` (OpenAIBackend does).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable, Sequence

from hieramas_jax.llm.base import ConfigError, Message, check_models
from hieramas_jax.llm.cache import CachedBackend

# What a probe asks: one short answer (the simulator server answers it too).
PROBE_MESSAGES: tuple[Message, ...] = ({"role": "user", "content": "Reply with the single word OK."},)
PROBE_MAX_TOKENS = 8


class EndpointError(ConfigError):
  """Some models of the pool do not answer; ``failures`` holds (model, base_url, cause) per model."""

  def __init__(self, failures: Sequence[tuple[str, str, str]]):
    self.failures = list(failures)
    super().__init__("\n".join(f"model {model!r} at {url}: {cause}" for model, url, cause in self.failures))

  def __reduce__(self):  # pickled from its failures: a multi-host run sends it to the other processes
    return type(self), (self.failures,)


def _unwrap(backend: Any) -> Any:
  """The backend under any response caches (a probe must reach the endpoint)."""
  while isinstance(backend, CachedBackend):
    backend = backend.backend
  return backend


async def apreflight(backend: Any, models: Iterable[str], *, timeout_s: float = 20.0) -> None:
  """Checks that every model answers one tiny request; raises EndpointError if some do not.

  Args:
    backend: any backend (a CachedBackend is looked through).
    models: the models the run will call (repeats are probed once, None ignored).
    timeout_s: the whole check finishes within this many seconds.

  Raises:
    UnknownModelError: a model the backend does not serve.
    EndpointError: one line per failing model: name, base URL, cause.
  """
  names = sorted({m for m in models if m is not None})  # None: a skipped slot
  check_models(backend, names)
  inner = _unwrap(backend)
  probe = getattr(inner, "probe", None)
  if probe is None or not names:
    return  # no endpoint to reach (the in-process simulator)
  start = time.monotonic()
  # The probes stop themselves a little early so that their own causes ("connection
  # refused", "timeout after N s") are reported rather than a cancellation.
  probe_budget = max(0.1, timeout_s - min(1.0, 0.1 * timeout_s))
  tasks = {name: asyncio.ensure_future(probe(name, timeout_s=probe_budget)) for name in names}
  _, pending = await asyncio.wait(tasks.values(), timeout=max(0.0, timeout_s - (time.monotonic() - start)))
  for task in pending:
    task.cancel()
  if pending:
    await asyncio.wait(pending)
  failures = []
  for name, task in tasks.items():
    if task in pending:
      cause = f"timeout after {timeout_s:.3g} s"
    elif task.exception() is not None:
      error = task.exception()
      cause = f"{type(error).__name__}: {error}"
    else:
      failure = task.result()
      if failure is None:
        continue
      cause = failure.cause
    failures.append((name, inner.base_url(name), cause))
  if failures:
    raise EndpointError(failures)


def preflight(backend: Any, models: Iterable[str], *, timeout_s: float = 20.0) -> None:
  """Synchronous :func:`apreflight`; call it where no event loop runs.

  It runs on this thread's persistent loop (``executor.run_sync``), the one the
  executor uses afterwards, so the connections it opens are reused by the run.

  Raises:
    RuntimeError: called from a running event loop (await ``apreflight`` there).
    UnknownModelError, EndpointError: as ``apreflight``.
  """
  try:
    asyncio.get_running_loop()
  except RuntimeError:
    pass
  else:
    raise RuntimeError("preflight() was called from a running event loop; await apreflight(...) instead")
  from hieramas_jax.executor import run_sync  # pylint: disable=g-import-not-at-top  # executor imports llm

  run_sync(apreflight(backend, models, timeout_s=timeout_s))

"""The openai clients and semaphores of one event loop, and their closing.

asyncio objects (semaphores, HTTP sessions) belong to the loop that made them,
so ``OpenAIBackend`` keeps one ``LoopState`` per loop it is used from. A state
closes its clients with ``aclose`` on its loop, when the loop shuts down through
``asyncio.run`` / ``asyncio.Runner.close`` (its async-generator shutdown), from
another thread with ``close_from_outside``, or at interpreter exit at the latest.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import threading
from typing import AsyncIterator, Mapping, Sequence

import httpx2
import openai

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """One server and key: its models share its clients and its concurrency limit."""

  base_url: str
  api_key_env: str | None
  limit: int


class LoopState:
  """Clients and semaphores bound to one event loop (asyncio objects cannot move loops)."""

  def __init__(self, loop: asyncio.AbstractEventLoop, endpoints: Sequence[Endpoint],
               keys: Mapping[str | None, str], max_concurrency: int, timeout_s: float, transport: str):
    self.loop = loop
    self.closed = False
    self.global_limit = asyncio.Semaphore(max_concurrency)
    self.endpoint_limit = {e: asyncio.Semaphore(e.limit) for e in endpoints}
    self.clients: dict[Endpoint, openai.AsyncOpenAI] = {}
    self._http: list[httpx2.AsyncClient] = []
    self._guard: AsyncIterator[None] | None = None
    client_class = openai.DefaultAioHttpClient if transport == "aiohttp" else httpx2.AsyncClient
    for e in endpoints:
      http = client_class(
          timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
          limits=httpx2.Limits(max_connections=e.limit, max_keepalive_connections=e.limit),
          follow_redirects=True)
      self._http.append(http)
      self.clients[e] = openai.AsyncOpenAI(api_key=keys[e.api_key_env], base_url=e.base_url, max_retries=0,
                                           timeout=timeout_s, http_client=http)
    _OPEN_STATES.add(self)  # closed at interpreter exit at the latest

  async def _close_at_shutdown(self) -> AsyncIterator[None]:
    # Parked at its yield; the loop's shutdown_asyncgens (asyncio.run, Runner.close)
    # closes it while the loop still runs, and the clients close with it.
    try:
      yield
    finally:
      await self._close_clients()

  async def start(self) -> None:
    """Registers the shutdown guard with the running loop (call once, on self.loop)."""
    self._guard = self._close_at_shutdown()
    await self._guard.__anext__()

  async def _close_clients(self) -> None:
    if self.closed:
      return
    self.closed = True
    _OPEN_STATES.discard(self)
    for client in self.clients.values():
      try:
        await client.close()
      except Exception as e:  # pylint: disable=broad-except  # closing must go on for the other clients
        _LOG.debug("closing an HTTP client failed: %r", e)

  async def aclose(self) -> None:
    """Closes the clients; run it on self.loop."""
    if self._guard is not None:
      await self._guard.aclose()  # its finally closes the clients
    await self._close_clients()

  def abandon(self) -> None:
    """Marks the clients of a loop that was closed without shutting down as closed.

    Their sockets cannot be closed through a closed loop (the OS closes them
    with the process); this only stops aiohttp from reporting them as leaked.
    """
    self.closed = True
    _OPEN_STATES.discard(self)
    if self._guard is not None:
      closing = self._guard.aclose()
      try:
        closing.send(None)  # the finally finds closed=True and returns without awaiting
      except StopIteration:
        pass
      except RuntimeError:  # the generator never started or already finished
        closing.close()
    for http in self._http:
      session = getattr(getattr(http, "_transport", None), "client", None)
      connector = getattr(session, "connector", None)
      close = getattr(connector, "_close", None)
      if close is not None:
        try:
          close()
        except Exception:  # pylint: disable=broad-except  # best effort on a dead loop
          pass

  def close_from_outside(self, timeout_s: float = 10.0) -> None:
    """Closes the clients from a thread where self.loop is not running."""
    if self.closed:
      return
    loop = self.loop
    if loop.is_closed():
      self.abandon()
    elif loop.is_running():  # running in another thread: ask it to close them
      future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
      try:
        future.result(timeout_s)
      except Exception as e:  # pylint: disable=broad-except
        _LOG.warning("could not close the HTTP clients on a running event loop: %r", e)
    else:
      try:
        asyncio.get_running_loop()
      except RuntimeError:
        loop.run_until_complete(self.aclose())
        return
      # Another loop runs in this thread: drive the idle loop from a helper thread.
      helper = threading.Thread(target=loop.run_until_complete, args=(self.aclose(),), daemon=True)
      helper.start()
      helper.join(timeout_s)


# States not closed yet, over all backends: closed at interpreter exit at the latest.
_OPEN_STATES: set[LoopState] = set()


@atexit.register
def _close_open_states_at_exit() -> None:
  for state in list(_OPEN_STATES):
    try:
      state.close_from_outside(timeout_s=5.0)
    except Exception as e:  # pylint: disable=broad-except  # never fail the exit
      _LOG.debug("closing HTTP clients at exit failed: %r", e)

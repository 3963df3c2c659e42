"""The persistent response cache."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hieramas_jax.llm.base import Response, Usage, error_response
from hieramas_jax.llm.cache import CacheError, CachedBackend, ResponseCache, cache_key

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]


class CountingBackend:
  """Answers every request with a fresh text; fails for model 'bad'."""

  def __init__(self, delay_s: float = 0.0):
    self.calls = 0
    self.delay_s = delay_s

  def known_models(self):
    return {"m", "bad"}

  async def complete(self, model, messages, *, sample_index=0, **params):
    self.calls += 1
    await asyncio.sleep(self.delay_s)
    if model == "bad":
      return error_response(model, "HTTP 500: boom")
    text = f"answer {self.calls} to {messages[-1]['content']} #{sample_index} {sorted(params.items())}"
    return Response(model=model, text=text, usage=Usage(10, 20), cost=0.001 * self.calls, latency=0.1)


def test_key_depends_on_model_messages_params_and_sample_index():
  base = cache_key("m", MSGS, {"temperature": 0.7}, 0)
  assert base == cache_key("m", [dict(MSGS[0])], {"temperature": 0.7}, 0)
  assert len({base,
              cache_key("m2", MSGS, {"temperature": 0.7}, 0),
              cache_key("m", [{"role": "user", "content": "What is 2 + 3?"}], {"temperature": 0.7}, 0),
              cache_key("m", MSGS, {"temperature": 0.8}, 0),
              cache_key("m", MSGS, {"temperature": 0.7, "max_tokens": 10}, 0),
              cache_key("m", MSGS, {"temperature": 0.7}, 1)}) == 6


def test_hits_keep_original_cost_are_flagged_and_errors_are_not_stored(tmp_path):
  inner = CountingBackend()
  backend = CachedBackend(inner, tmp_path / "cache.sqlite")

  async def run():
    first = await backend.complete("m", MSGS, sample_index=0, temperature=0.7)
    second = await backend.complete("m", MSGS, sample_index=0, temperature=0.7)
    other_sample = await backend.complete("m", MSGS, sample_index=1, temperature=0.7)
    bad1 = await backend.complete("bad", MSGS)
    bad2 = await backend.complete("bad", MSGS)
    return first, second, other_sample, bad1, bad2

  first, second, other_sample, bad1, bad2 = asyncio.run(run())
  assert not first.cached and second.cached and second.attempts == 0
  assert (second.text, second.cost, second.usage) == (first.text, first.cost, first.usage)
  assert other_sample.text != first.text and not other_sample.cached  # temperature > 0: two samples
  assert not bad1.ok and not bad2.ok and not bad2.cached  # errors are retried, never replayed
  assert inner.calls == 4 and len(backend.cache) == 2
  # A new process (here: a new connection) sees the stored responses.
  again = ResponseCache(tmp_path / "cache.sqlite").get(cache_key("m", MSGS, {"temperature": 0.7}, 0))
  assert again is not None and again.text == first.text and again.cached


def test_many_coroutines_share_identical_requests_in_flight(tmp_path):
  inner = CountingBackend(delay_s=0.01)
  backend = CachedBackend(inner, tmp_path / "c.sqlite")

  async def run():
    jobs = [backend.complete("m", [{"role": "user", "content": f"q{i % 50}"}], sample_index=0)
            for i in range(300)]
    return await asyncio.gather(*jobs)

  results = asyncio.run(run())
  assert inner.calls == 50 and len(backend.cache) == 50
  assert backend.stats.misses == 50 and backend.stats.shared == 250
  by_question = {}
  for r in results:
    by_question.setdefault(r.text.split(" to ")[1], set()).add(r.text)
  assert all(len(texts) == 1 for texts in by_question.values())


_WRITER = textwrap.dedent("""
    import sys, time
    from hieramas_jax.llm.base import Response, Usage
    from hieramas_jax.llm.cache import ResponseCache
    cache = ResponseCache(sys.argv[1])
    for i in range(int(sys.argv[2])):
      cache.put(f"{sys.argv[3]}-{i}", Response(model="m", text=f"t{i}", usage=Usage(1, 2), cost=0.5))
    print("written", flush=True)
    time.sleep(60)
""")


def test_committed_responses_survive_a_killed_process(tmp_path):
  path = str(tmp_path / "killed.sqlite")
  proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, "120", "k"], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "written"
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
  cache = ResponseCache(path)
  assert len(cache) == 120
  hit = cache.get("k-119")
  assert hit is not None and hit.text == "t119" and hit.cost == 0.5


def test_two_processes_write_concurrently(tmp_path):
  path = str(tmp_path / "shared.sqlite")
  ResponseCache(path).close()  # create the table once, so both writers only insert
  procs = [subprocess.Popen([sys.executable, "-c", _WRITER.replace("time.sleep(60)", ""), path, "200", tag],
                            stdout=subprocess.PIPE, text=True) for tag in ("a", "b")]
  for p in procs:
    p.communicate(timeout=60)
    assert p.returncode == 0
  assert len(ResponseCache(path)) == 400


def test_put_of_an_error_is_ignored(tmp_path):
  cache = ResponseCache(tmp_path / "e.sqlite")
  cache.put("k", error_response("m", "HTTP 429"))
  assert len(cache) == 0 and cache.get("k") is None


@pytest.mark.parametrize("exc", [RuntimeError("boom"), asyncio.CancelledError()])
def test_a_raising_backend_releases_waiters(tmp_path, exc):
  class Raising(CountingBackend):

    async def complete(self, model, messages, *, sample_index=0, **params):
      await asyncio.sleep(0.01)
      raise exc

  backend = CachedBackend(Raising(), tmp_path / "r.sqlite")

  async def run():
    return await asyncio.gather(backend.complete("m", MSGS), backend.complete("m", MSGS), return_exceptions=True)

  outcomes = asyncio.run(run())
  assert all(isinstance(o, BaseException) for o in outcomes)
  assert not backend._in_flight  # pylint: disable=protected-access


def test_close_closes_the_wrapped_backend_and_the_file(tmp_path):
  class Closable(CountingBackend):

    def __init__(self):
      super().__init__()
      self.closed = 0

    def close(self):
      self.closed += 1

  inner = Closable()
  backend = CachedBackend(inner, tmp_path / "c.sqlite")
  asyncio.run(backend.complete("m", MSGS))
  backend.close()
  assert inner.closed == 1
  with pytest.raises(CacheError, match=f"response cache {tmp_path / 'c.sqlite'}: .*already closed"):
    asyncio.run(backend.complete("m", MSGS))
  backend.close()  # twice is harmless
  assert len(ResponseCache(tmp_path / "c.sqlite")) == 1


def test_a_response_that_cannot_be_stored_still_reaches_every_waiter(tmp_path):
  backend = CachedBackend(CountingBackend(delay_s=0.05), tmp_path / "c.sqlite")

  async def run():
    jobs = [asyncio.ensure_future(backend.complete("m", MSGS)) for _ in range(2)]
    await asyncio.sleep(0.01)  # both wait: the first on the backend, the second on the first
    backend.cache.close()  # storing the answer will fail
    return await asyncio.gather(*jobs, return_exceptions=True)

  first, shared = asyncio.run(run())
  assert isinstance(first, CacheError)  # said, not swallowed
  assert shared.ok and shared.cached and backend.stats.shared == 1
  assert not backend._in_flight  # pylint: disable=protected-access

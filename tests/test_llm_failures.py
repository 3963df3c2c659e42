"""The LLM layer never fails silently: preflight, causes in words, retries, cache keys, finish_reason, closing.

Everything runs against the HTTP simulator on 127.0.0.1 (or a port nobody listens on).
"""

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time

import aiohttp
import httpcore2
import httpx2
import openai
import pytest

from hieramas_jax import executor
from hieramas_jax.llm.base import Response, UnknownModelError, Usage
from hieramas_jax.llm.cache import CacheError, CachedBackend, ResponseCache, cache_key
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy, _connection_failure, _status_failure
from hieramas_jax.llm.pool import paper_pool
from hieramas_jax.llm.preflight import EndpointError, apreflight, preflight
from hieramas_jax.llm.sim import SimulatedBackend, default_world
from hieramas_jax.llm.sim_http import FaultConfig, ServerThread, SimServer
from hieramas_jax.llm.sim_task import ArithmeticTask

TASK = ArithmeticTask()
PROBLEMS = TASK.load("test", n=10)
MESSAGES = TASK.proposer_messages(PROBLEMS[0], TASK.roles[0], [])
FAST_RETRY = RetryPolicy(max_retries=2, base_delay_s=0.001, max_delay_s=0.01)
KEY = "sk-sim-right-0123456789"


@contextlib.contextmanager
def sim_server(**kwargs):
  with ServerThread(SimServer(SimulatedBackend(default_world(seed=0), TASK, PROBLEMS), **kwargs)) as thread:
    yield thread


def dead_port() -> int:
  """A loopback port nobody listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_backend(pool, **kwargs):
  kwargs.setdefault("retry", FAST_RETRY)
  kwargs.setdefault("timeout_s", 5.0)
  return OpenAIBackend(pool, **kwargs)


# ---------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_preflight_names_every_failing_model_its_url_and_the_cause(transport):
  port = dead_port()
  with sim_server(api_key=KEY) as server:
    url = server.base_url
    pool = (paper_pool(["Qwen3-8B"], base_url=url, api_key_env="SIM_KEY") +
            paper_pool(["GPT-4o-mini"], base_url=f"http://127.0.0.1:{port}/v1") +
            paper_pool(["Llama-3.1-8B"], base_url=url, api_key_env="SIM_KEY", served_name="no-such-model") +
            paper_pool(["GPT-5-mini"], base_url=url, api_key_env="SIM_WRONG_KEY") +
            paper_pool(["Gemma-3-27B"], base_url="http://no-such-host.invalid/v1"))
    backend = make_backend(pool, environ={"SIM_KEY": KEY, "SIM_WRONG_KEY": "sk-sim-wrong-9876543210"},
                           transport=transport)
    start = time.monotonic()
    with pytest.raises(EndpointError) as raised:
      preflight(backend, [s.name for s in pool] + ["Qwen3-8B"], timeout_s=10.0)
    elapsed = time.monotonic() - start
    backend.close()
    assert elapsed < 5.0  # none of these causes needs the timeout
    lines = str(raised.value).splitlines()
    assert lines == [
        f"model 'GPT-4o-mini' at http://127.0.0.1:{port}/v1: connection refused",
        f"model 'GPT-5-mini' at {url}: HTTP 401 unauthorized (check the API key in $SIM_WRONG_KEY)",
        "model 'Gemma-3-27B' at http://no-such-host.invalid/v1: DNS lookup failed for host no-such-host.invalid",
        f"model 'Llama-3.1-8B' at {url}: HTTP 404 model 'no-such-model' not found on this server",
    ]
    assert [f[0] for f in raised.value.failures] == ["GPT-4o-mini", "GPT-5-mini", "Gemma-3-27B", "Llama-3.1-8B"]
    assert "sk-sim" not in str(raised.value)
    stats = server.server.stats
    assert stats.probes == 1 and stats.completed == 0  # Qwen3-8B answered, once although named twice


def test_preflight_looks_through_the_response_cache(tmp_path):
  with sim_server() as server:
    cached = CachedBackend(make_backend(paper_pool(base_url=server.base_url)), tmp_path / "cache.sqlite")
    for _ in range(2):
      preflight(cached, cached.known_models())
    assert server.server.stats.probes == 16 and len(cached.cache) == 0
    cached.close()


def test_preflight_reports_a_stalled_endpoint_within_its_timeout():
  with sim_server(faults=FaultConfig(model_faults={"GPT-4o-mini": "stall"}, stall_s=30.0)) as server:
    backend = make_backend(paper_pool(["GPT-4o-mini", "Qwen3-8B"], base_url=server.base_url))
    start = time.monotonic()
    with pytest.raises(EndpointError, match=r"^model 'GPT-4o-mini' at .*: timeout after 1\.8 s$"):
      preflight(backend, ["GPT-4o-mini", "Qwen3-8B"], timeout_s=2.0)
    assert time.monotonic() - start < 2.0
    backend.close()


def test_preflight_tells_a_busy_endpoint_from_a_dead_one():
  # GPT-4o-mini always answers 429 (alive, busy); every other probe gets one 500 first.
  faults = FaultConfig(model_faults={"GPT-4o-mini": "429"}, retry_after_s=0.2, first_attempts=1,
                       first_kind="500", probe_faults=True)
  with sim_server(faults=faults) as server:
    backend = make_backend(paper_pool(base_url=server.base_url))
    start = time.monotonic()
    preflight(backend, backend.known_models(), timeout_s=2.0)
    assert time.monotonic() - start < 2.0
    stats = server.server.stats
    assert stats.faults["500"] == 7 and stats.probes == 7 and 3 <= stats.faults["429"] <= 10
    backend.close()


def test_preflight_fails_a_model_that_keeps_failing():
  faults = FaultConfig(model_faults={"Qwen3-8B": "500", "GPT-5-mini": "malformed", "GPT-5-nano": "empty"})
  with sim_server(faults=faults) as server:
    backend = make_backend(paper_pool(base_url=server.base_url))
    with pytest.raises(EndpointError) as raised:
      preflight(backend, backend.known_models(), timeout_s=5.0)
    causes = {model: cause for model, _, cause in raised.value.failures}
    assert causes == {"Qwen3-8B": "HTTP 500 server error: internal error (simulated)",
                      "GPT-5-mini": causes["GPT-5-mini"],
                      "GPT-5-nano": "malformed response body: empty 'choices'"}
    assert causes["GPT-5-mini"].startswith("malformed response body")
    assert server.server.stats.faults == {"500": 2, "malformed": 2, "empty": 2}  # one second try each
    backend.close()


def test_preflight_of_the_in_process_simulator_only_checks_names():
  backend = SimulatedBackend(default_world(seed=0), TASK, PROBLEMS)
  start = time.monotonic()
  preflight(backend, ["Qwen3-8B", "GPT-5-mini"])
  asyncio.run(apreflight(backend, ["Qwen3-8B"]))
  assert time.monotonic() - start < 0.5 and backend.calls == 0
  with pytest.raises(UnknownModelError, match="'GPT-7'"):
    preflight(backend, ["Qwen3-8B", "GPT-7"])

  async def inside_a_loop():
    preflight(backend, ["Qwen3-8B"])

  with pytest.raises(RuntimeError, match="await apreflight"):
    asyncio.run(inside_a_loop())


# ---------------------------------------------------------------------------
# Causes of failed calls, retries, finish_reason
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_refused_connection_is_reported_as_such(transport):
  backend = make_backend(paper_pool(["Qwen3-8B"], base_url=f"http://127.0.0.1:{dead_port()}/v1"),
                         transport=transport, timeout_s=120.0)
  start = time.monotonic()
  response = executor.run_sync(backend.complete("Qwen3-8B", MESSAGES))
  assert time.monotonic() - start < 2.0
  assert response.error == "connection refused (after 3 attempts)" and response.attempts == 3
  backend.close()


def test_a_timeout_is_reported_with_its_length():
  with sim_server(faults=FaultConfig(model_faults={"Qwen3-8B": "stall"}, stall_s=5.0)) as server:
    backend = make_backend(paper_pool(["Qwen3-8B"], base_url=server.base_url), timeout_s=0.2,
                           retry=RetryPolicy(max_retries=1, base_delay_s=0.001))
    response = executor.run_sync(backend.complete("Qwen3-8B", MESSAGES))
    assert response.error == "timeout after 0.2 s (after 2 attempts)"
    backend.close()


def _chained(*errors):
  """errors[0] raised from errors[1] raised from ... (the way openai wraps transport errors)."""
  for outer, inner in zip(errors, errors[1:]):
    outer.__cause__ = inner
  return errors[0]


def test_causes_come_from_the_innermost_errors():
  request = httpx2.Request("POST", "http://h/v1/chat/completions")

  def cause(*errors):
    # openai raises APITimeoutError over an httpx timeout, APIConnectionError over the rest.
    outer = (openai.APITimeoutError(request) if isinstance(errors[0], httpx2.TimeoutException) else
             openai.APIConnectionError(request=request))
    return _connection_failure(_chained(outer, *errors), host="h", timeout_s=120, connect_timeout_s=10).cause

  key = aiohttp.client_reqrep.ConnectionKey("h", 80, False, True, None, None, None)
  # The aiohttp transport maps every failed connect to httpx's ConnectTimeout.
  refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connect call failed"))
  assert cause(httpx2.ConnectTimeout("x"), refused) == "connection refused"
  unreachable = aiohttp.ClientConnectorError(key, OSError(101, "Network is unreachable"))
  assert cause(httpx2.ConnectTimeout("x"), unreachable) == "connection error: Network is unreachable"
  assert cause(httpx2.ConnectTimeout("x"), aiohttp.ConnectionTimeoutError("x")) == "connect timeout after 10 s"
  assert cause(httpx2.ReadTimeout("x"), aiohttp.SocketTimeoutError("x")) == "timeout after 120 s"
  assert cause(httpx2.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()) == (
      "connection closed by the server before it answered")
  # The httpx transport.
  assert cause(httpx2.ConnectTimeout("x"), httpcore2.ConnectTimeout("x")) == "connect timeout after 10 s"
  assert cause(httpx2.ReadTimeout("x"), httpcore2.ReadTimeout("x")) == "timeout after 120 s"
  assert cause(httpx2.ConnectError("x"), socket.gaierror(-2, "Name or service not known")) == (
      "DNS lookup failed for host h")
  assert cause(httpx2.ConnectError("x"), OSError(101, "Network is unreachable")) == (
      "connection error: Network is unreachable")
  assert cause(httpx2.RemoteProtocolError("Server disconnected")) == (
      "connection closed by the server before it answered")


def test_http_errors_say_what_to_fix():
  request = httpx2.Request("POST", "http://h/v1/chat/completions")
  keyed, keyless = paper_pool(["Qwen3-8B"], api_key_env="MY_KEY")[0], paper_pool(["Qwen3-8B"])[0]

  def cause(status, spec=keyed, **error):
    body = {"error": {"message": "m", "type": "t", "param": None, "code": None, **error}}
    response = httpx2.Response(status, request=request, json=body, headers={"retry-after": "3"})
    client = openai.OpenAI(api_key="x", base_url="http://h/v1")  # builds the error the way a call does
    exc = client._make_status_error_from_response(response)  # pylint: disable=protected-access
    return _status_failure(exc, spec, "http://h/v1")

  assert cause(401, spec=keyless).cause == (
      "HTTP 401 unauthorized (the server wants an API key: set api_key_env for this model and export the key)")
  assert cause(403).cause == "HTTP 403 forbidden: m (check the API key in $MY_KEY)"
  assert cause(404).cause == ("HTTP 404 not found: http://h/v1/chat/completions (check base_url; "
                              "OpenAI-compatible servers usually end in /v1)")
  assert cause(404, code="model_not_found").cause == "HTTP 404 model 'Qwen3-8B' not found on this server"
  quota = cause(429, code="insufficient_quota")
  assert quota.cause.startswith("HTTP 429 quota exceeded: m") and not quota.retryable
  busy = cause(429)
  assert busy.cause == "HTTP 429 rate limited: m" and busy.retryable and busy.retry_after_s == 3.0
  assert cause(400).cause == "HTTP 400: m" and not cause(400).retryable
  assert cause(503).retryable and cause(408).retryable


def test_finish_reason_travels_from_the_wire_into_the_cache(tmp_path):
  with sim_server(faults=FaultConfig(model_faults={"GPT-5-nano": "length"})) as server:
    cached = CachedBackend(make_backend(paper_pool(base_url=server.base_url)), tmp_path / "c.sqlite")

    async def run():
      return [await cached.complete(m, MESSAGES, max_tokens=64) for m in ("GPT-5-nano", "Qwen3-8B") * 2]

    cut, whole, cut_again, whole_again = executor.run_sync(run())
    assert cut.ok and cut.finish_reason == "length" and whole.finish_reason == "stop"
    assert cut_again.cached and cut_again.finish_reason == "length" and whole_again.finish_reason == "stop"
    assert server.server.stats.completed == 2
    cached.close()
  direct = SimulatedBackend(default_world(seed=0), TASK, PROBLEMS).answer("GPT-5-nano", MESSAGES)
  assert direct.finish_reason == "stop"
  assert Response.from_json(direct.to_json()).finish_reason == "stop"
  old_record = {k: v for k, v in direct.to_json().items() if k != "finish_reason"}  # cached by older versions
  assert Response.from_json(old_record).finish_reason is None


# ---------------------------------------------------------------------------
# The response cache
# ---------------------------------------------------------------------------


def test_cache_misses_when_the_endpoint_served_name_or_seeding_changes(tmp_path):
  path = tmp_path / "cache.sqlite"

  def ask(server, **overrides):
    seed = overrides.pop("seed_from_sample_index", False)
    cached = CachedBackend(make_backend(paper_pool(["GPT-4o-mini"], base_url=server.base_url, **overrides),
                                        seed_from_sample_index=seed), path)
    response = executor.run_sync(cached.complete("GPT-4o-mini", MESSAGES, temperature=0.7))
    cached.close()
    return response

  with sim_server() as a, sim_server() as b:
    first = ask(a)
    assert not first.cached and a.server.stats.completed == 1
    assert ask(a).cached and a.server.stats.requests == 1  # same everything: a hit
    assert not ask(b).cached and b.server.stats.completed == 1  # another server: a miss
    assert not ask(a, served_name="GPT-5-mini").cached and a.server.stats.completed == 2
    assert not ask(a, seed_from_sample_index=True).cached and a.server.stats.completed == 3
    assert ask(b).cached and b.server.stats.requests == 1
  assert len(ResponseCache(path)) == 4


def test_cache_misses_when_the_simulated_world_changes(tmp_path):
  path = tmp_path / "sim.sqlite"

  def ask(seed):
    inner = SimulatedBackend(default_world(seed=seed), TASK, PROBLEMS)
    cached = CachedBackend(inner, path)
    response = asyncio.run(cached.complete("Qwen3-8B", MESSAGES))
    cached.close()
    return response, inner.calls

  first, calls = ask(0)
  assert not first.cached and calls == 1
  again, calls = ask(0)
  assert again.cached and calls == 0  # same world: a hit
  other, calls = ask(1)
  assert not other.cached and calls == 1  # sim_seed changed: a miss, not seed 0's answer


def test_the_key_covers_the_identity_and_every_parameter():
  base = cache_key("m", MESSAGES, {"temperature": 0.7}, 0, identity={"base_url": "http://a/v1"})
  variants = [
      cache_key("m", MESSAGES, {"temperature": 0.7}, 0, identity={"base_url": "http://b/v1"}),
      cache_key("m", MESSAGES, {"temperature": 0.7}, 0, identity={"base_url": "http://a/v1", "wire_name": "x"}),
      cache_key("m", MESSAGES, {"temperature": 0.7}, 0),
  ] + [cache_key("m", MESSAGES, {"temperature": 0.7, name: value}, 0, identity={"base_url": "http://a/v1"})
       for name, value in (("top_p", 0.9), ("max_tokens", 10), ("seed", 3), ("stop", ["\n"]))]
  assert len({base, *variants}) == 1 + len(variants)


def test_old_cache_files_open_and_their_keys_are_not_used(tmp_path, caplog):
  path = str(tmp_path / "old.sqlite")
  old = sqlite3.connect(path)
  old.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT NULL, "
              "created REAL NOT NULL)")
  record = Response(model="m", text="stale", usage=Usage(1, 2)).to_json()
  del record["finish_reason"]
  old.execute("INSERT INTO responses VALUES ('0' || hex(randomblob(31)), 'm', ?, 0)", (str(record).replace("'", '"')
                                                                                      .replace("None", "null"),))
  old.commit()
  old.close()
  with caplog.at_level(logging.WARNING, logger="hieramas_jax.llm.cache"):
    cache = ResponseCache(path)
  assert "1 responses were stored under key format 1" in caplog.text and path in caplog.text
  assert len(cache) == 1  # kept, unused
  cache.close()
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="hieramas_jax.llm.cache"):
    ResponseCache(path).close()
  assert not caplog.text  # said once


def test_a_corrupt_cache_file_names_the_file_and_the_fix(tmp_path):
  garbage = tmp_path / "garbage.sqlite"
  garbage.write_bytes(b"this is not a database" * 200)
  with pytest.raises(CacheError, match=f"response cache {garbage}: .*delete it or move it away"):
    ResponseCache(garbage)
  damaged = tmp_path / "damaged.sqlite"
  cache = ResponseCache(damaged)
  for i in range(300):
    cache.put(f"k{i}", Response(model="m", text="x" * 500, usage=Usage(1, 2)))
  cache.close()
  data = bytearray(damaged.read_bytes())
  for page in range(2, len(data) // 4096 - 1, 3):  # overwrite the headers of some b-tree pages
    data[page * 4096:page * 4096 + 64] = b"\xa5" * 64
  damaged.write_bytes(bytes(data))
  with pytest.raises(CacheError, match=f"response cache {damaged}: .*delete it or move it away"):
    ResponseCache(damaged)


def test_an_unwritable_cache_location_names_the_file_and_the_fix(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(CacheError, match=f"response cache {blocker}/run/c.sqlite: cannot create its directory"):
    ResponseCache(blocker / "run" / "c.sqlite")
  # A read-only directory holding a valid cache: a read-only bind mount (root
  # ignores permissions), or plain permissions for other users.
  readonly = tmp_path / "readonly"
  path = readonly / "c.sqlite"
  ResponseCache(path).close()
  probe = textwrap.dedent("""
      import sys
      from hieramas_jax.llm.cache import CacheError, ResponseCache
      try:
        ResponseCache(sys.argv[1])
      except CacheError as e:
        print(e)
  """)
  command = [sys.executable, "-c", probe, str(path)]
  if os.geteuid() == 0:
    mount = f"mount --bind {readonly} {readonly} && mount -o remount,ro,bind {readonly} {readonly}"
    if subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode != 0:
      pytest.skip("running as root without mount namespaces (unshare -m): cannot make a read-only directory")
    command = ["unshare", "-m", "sh", "-c", mount + ' && exec "$0" "$@"', *command]
  else:
    os.chmod(readonly, 0o555)
  try:
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
  finally:
    os.chmod(readonly, 0o755)
  assert f"response cache {path}: cannot open it" in out
  assert "not writable: make both writable" in out


# ---------------------------------------------------------------------------
# Closing HTTP sessions
# ---------------------------------------------------------------------------

_USER = textwrap.dedent("""
    import asyncio, gc, sys, threading
    from hieramas_jax import executor
    from hieramas_jax.llm.cache import CachedBackend
    from hieramas_jax.llm.openai_backend import OpenAIBackend
    from hieramas_jax.llm.pool import paper_pool
    from hieramas_jax.llm.sim import SimulatedBackend, default_world
    from hieramas_jax.llm.sim_http import ServerThread, SimServer
    from hieramas_jax.llm.sim_task import ArithmeticTask
    task = ArithmeticTask()
    problems = task.load("test", n=3)
    messages = task.proposer_messages(problems[0], task.roles[0], [])
    mode = sys.argv[1]
    with ServerThread(SimServer(SimulatedBackend(default_world(seed=0), task, problems))) as server:
      backend = OpenAIBackend(paper_pool(base_url=server.base_url), transport=sys.argv[2])
      cached = CachedBackend(backend, sys.argv[3])
      async def ask(model):
        return (await cached.complete(model, messages)).ok
      assert executor.run_sync(ask("Qwen3-8B"))  # the thread's persistent loop
      assert asyncio.run(ask("GPT-4o-mini"))  # a loop that ends
      if "dead_loop" in sys.argv:  # a loop closed without shutting down: its sockets only close at exit
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(ask("GPT-5-mini"))
        loop.close()
      worker = threading.Thread(target=lambda: executor.run_sync(ask("Llama-3.1-8B")))  # another thread's loop
      worker.start()
      worker.join()
      if mode == "close":
        cached.close()
        assert all(s.closed for s in backend._states) and not backend._states
        try:
          len(cached.cache)
        except Exception as e:
          print("cache closed:", type(e).__name__)
      del backend, cached
      gc.collect()
    print("done", flush=True)
""")


@pytest.mark.parametrize("mode,transport,dead_loop", [("close", "aiohttp", False), ("exit", "aiohttp", False),
                                                      ("close", "httpx", False), ("close", "aiohttp", True)])
def test_no_http_session_is_left_unclosed(tmp_path, mode, transport, dead_loop):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-W", "default", "-c", _USER, mode, transport, str(tmp_path / "c.sqlite")] +
                          (["dead_loop"] if dead_loop else []), capture_output=True, text=True, timeout=120, cwd=root)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "done" in result.stdout
  if mode == "close":
    assert "cache closed: CacheError" in result.stdout
  assert "Unclosed" not in result.stderr, result.stderr[-3000:]  # aiohttp's session and connector reports
  if not dead_loop:
    assert "unclosed transport" not in result.stderr, result.stderr[-3000:]


def test_close_inside_the_loop_says_to_await_aclose_and_the_backend_reopens():
  with sim_server() as server:
    backend = make_backend(paper_pool(["Qwen3-8B"], base_url=server.base_url))

    async def misuse():
      await backend.complete("Qwen3-8B", MESSAGES)
      with pytest.raises(RuntimeError, match="await backend.aclose"):
        backend.close()
      await backend.aclose()
      return await backend.complete("Qwen3-8B", MESSAGES)  # new clients after closing

    assert asyncio.run(misuse()).ok
    backend.close()
    assert not backend._states  # pylint: disable=protected-access

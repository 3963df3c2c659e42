"""The simulator server's command line (python -m launch.sim_server)."""

import contextlib
import json
import os
import pathlib
import sys
import urllib.request

import pytest
from conftest import listening_server

from hieramas_jax import executor
from hieramas_jax.executor import Plan
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy
from hieramas_jax.llm.pool import paper_pool
from hieramas_jax.llm.preflight import EndpointError, preflight
from hieramas_jax.llm.sim_task import ArithmeticTask

ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def cli_server(*extra_args, env=None):
  """Runs python -m launch.sim_server on a free port; yields its base URL."""
  cmd = [sys.executable, "-m", "launch.sim_server", "--port", "0", "--latency_s", "0.01",
         "--load_kwargs", json.dumps({"n": 20}), *extra_args]
  with listening_server(cmd, cwd=ROOT, env={**os.environ, **(env or {})}) as url:
    yield url


@pytest.fixture
def server_url():
  with cli_server("--fault_first_attempts", "1", "--fault_first_kind", "500") as url:
    yield url


def test_cli_serves_models_and_completions_with_faults(server_url):
  assert server_url.startswith("http://127.0.0.1:") and server_url.endswith("/v1")
  with urllib.request.urlopen(f"{server_url}/models", timeout=5) as r:
    models = {m["id"] for m in json.load(r)["data"]}
  assert "GPT-5-mini" in models and len(models) == 8
  task = ArithmeticTask()
  problems = task.load("test", n=20)
  backend = OpenAIBackend(paper_pool(base_url=server_url),
                          retry=RetryPolicy(max_retries=2, base_delay_s=0.001), timeout_s=5)
  plans = [Plan(p, task.roles, [["Qwen3-8B", "GPT-4o-mini"]] * 3, [[0, 1, 0], [0, 0, 1], [0, 0, 0]], "GPT-5-mini")
           for p in problems[:3]]
  results = executor.execute(plans, backend, task)
  executor.run_sync(backend.aclose())
  assert all(not r.errors and task.extract(r.final_text) is not None for r in results)
  assert all(c.attempts == 2 for r in results for c in r.calls)  # every first attempt got a 500
  with urllib.request.urlopen(f"{server_url.rsplit('/v1', 1)[0]}/stats", timeout=5) as r:
    stats = json.load(r)
  assert stats["faults"] == {"500": 21} and stats["completed"] == 21


def test_cli_with_a_key_rejects_a_wrong_one_and_unknown_models_before_the_run():
  with cli_server("--api_key_env", "SIM_CLI_KEY", "--fault_models", json.dumps({"GPT-5-mini": "500"}),
                  env={"SIM_CLI_KEY": "sk-cli-right-key"}) as url:
    pool = paper_pool(["Qwen3-8B", "GPT-4o-mini"], base_url=url, api_key_env="SIM_CLI_KEY")
    wrong = OpenAIBackend(pool, environ={"SIM_CLI_KEY": "sk-cli-wrong-key"})
    with pytest.raises(EndpointError) as raised:
      preflight(wrong, ["Qwen3-8B", "GPT-4o-mini"], timeout_s=10)
    wrong.close()
    assert str(raised.value).splitlines() == [
        f"model '{m}' at {url}: HTTP 401 unauthorized (check the API key in $SIM_CLI_KEY)"
        for m in ("GPT-4o-mini", "Qwen3-8B")]
    pool = paper_pool(["Qwen3-8B", "GPT-5-mini"], base_url=url, api_key_env="SIM_CLI_KEY") + paper_pool(
        ["GPT-4o-mini"], base_url=url, api_key_env="SIM_CLI_KEY", served_name="gpt-4o-mini-typo")
    right = OpenAIBackend(pool, environ={"SIM_CLI_KEY": "sk-cli-right-key"})
    with pytest.raises(EndpointError) as raised:
      preflight(right, ["Qwen3-8B", "GPT-5-mini", "GPT-4o-mini"], timeout_s=10)
    right.close()
    assert str(raised.value).splitlines() == [
        f"model 'GPT-4o-mini' at {url}: HTTP 404 model 'gpt-4o-mini-typo' not found on this server",
        f"model 'GPT-5-mini' at {url}: HTTP 500 server error: internal error (simulated)"]
    with urllib.request.urlopen(f"{url.rsplit('/v1', 1)[0]}/stats", timeout=5) as r:
      stats = json.load(r)
    assert stats["probes"] == 1 and stats["completed"] == 0 and stats["rejected"] == 3


def test_api_key_from_env_names_the_missing_variable(monkeypatch):
  from hieramas_jax.llm import sim_http  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("HIERAMAS_TEST_SERVER_KEY", raising=False)
  assert sim_http.api_key_from_env(None) is None
  with pytest.raises(ValueError, match="--api_key_env=HIERAMAS_TEST_SERVER_KEY but that environment variable"):
    sim_http.api_key_from_env("HIERAMAS_TEST_SERVER_KEY")
  monkeypatch.setenv("HIERAMAS_TEST_SERVER_KEY", "s3cret")
  assert sim_http.api_key_from_env("HIERAMAS_TEST_SERVER_KEY") == "s3cret"

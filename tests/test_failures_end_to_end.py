"""Failures are never graded and never silent, from the executor to the launchers.

* launch.train against a dead port or a server that wants another key, and
  launch.evaluate of a run whose server is gone: exit status 1 within 30 s, the
  last stderr line names the models, the URL and the cause;
* a stage-1 step whose calls all fail: exit status 1, one line, no checkpoint of
  that step, no summary, no unclosed HTTP session;
* under 15% mixed faults (429, 500, malformed, empty, stall) launch.evaluate gives
  the clean run's verdict for every query it does not report failed;
* stage 2 without a positive label trains and saves no classifier, and loading
  says so and draws random DAGs.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hieramas_jax import checkpointing
from hieramas_jax import config as base_config
from hieramas_jax import evaluation, executor, train
from hieramas_jax.llm import sim
from hieramas_jax.llm.base import Response, Usage, error_response
from hieramas_jax.llm.openai_backend import OpenAIBackend, RetryPolicy
from hieramas_jax.llm.sim_http import FaultConfig, ServerThread, SimServer
from hieramas_jax.system import HieraMAS
from hieramas_jax.train import environment, rollout

REPO = pathlib.Path(__file__).resolve().parents[1]

_POOL = (("A", 0.1), ("B", 0.3), ("C", 0.05))


def tiny_config(**overrides):
  c = base_config.base_config("math", "smoke")
  c.encoder.kind = "hashing"
  for key, value in overrides.items():
    *sections, field = key.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[field] = value
  return c


def _config_file(tmp: pathlib.Path, url: str, *, key_env: str | None = None, max_retries: int = 5) -> pathlib.Path:
  """A smoke stage-1 config whose three models live at ``url``."""
  path = tmp / "http_config.py"
  path.write_text(textwrap.dedent(f"""
      from hieramas_jax import config as base

      def get_config(arg=None):
        c = base.base_config("math", "smoke")
        c.stages = "stage1"
        c.encoder.kind = "hashing"
        c.llm.backend = "openai"
        c.llm.pool = "config"
        c.llm.models = [dict(name=n, base_url={url!r}, api_key_env={key_env!r}, price_in_per_m=p,
                             price_out_per_m=4 * p, profile="model " + n) for n, p in {_POOL!r}]
        c.llm.decision_model = "A"
        c.llm.max_retries = {max_retries}
        c.llm.timeout_s = 10.0
        c.stage1.steps = 3
        return c
  """))
  return path


@contextlib.contextmanager
def _sim_server_for(cfg_path: pathlib.Path, **server_kwargs):
  """The simulated pool of a config file's models (its splits registered) behind an HTTP server."""
  c = base_config.load_config_file(cfg_path)
  task = environment.load_task(c)
  problems = [p for split in environment.load_splits(c, task).values() for p in split]
  backend = sim.SimulatedBackend(sim.default_world(seed=0, pool=environment.pool_specs(c)), task, problems)
  with ServerThread(SimServer(backend, **server_kwargs)) as server:
    yield server


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_train(cfg_path: pathlib.Path, workdir: pathlib.Path, env: dict | None = None):
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "launch.train", f"--config={cfg_path}", f"--workdir={workdir}"],
                        cwd=REPO, capture_output=True, text=True, timeout=240,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))
  return proc, time.monotonic() - start


def _last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _assert_nothing_saved(workdir: pathlib.Path) -> None:
  assert not (workdir / "summary.json").exists()
  stage1_dir = workdir / "checkpoints" / "stage1"
  if stage1_dir.exists():
    with checkpointing.Checkpointer(stage1_dir) as ck:
      assert ck.latest_step() is None


# ---------------------------------------------------------------------------
# The launcher: one line, exit status 1, fast
# ---------------------------------------------------------------------------


def test_dead_port_stops_launch_train_within_30_s_with_one_line(tmp_path):
  url = f"http://127.0.0.1:{_free_port()}/v1"
  proc, elapsed = _launch_train(_config_file(tmp_path, url), tmp_path / "run")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert elapsed < 30, elapsed
  last = _last_line(proc.stderr)
  assert last.startswith("launch.train: EndpointError: "), proc.stderr[-3000:]
  assert all(f"'{name}' at {url}: connection refused" in last for name, _ in _POOL), last
  assert "Traceback" not in proc.stderr and "Unclosed client session" not in proc.stderr
  _assert_nothing_saved(tmp_path / "run")


def test_wrong_api_key_stops_launch_train_within_30_s_with_one_line(tmp_path):
  cfg = _config_file(tmp_path, "http://127.0.0.1:1/v1", key_env="HIERAMAS_TEST_KEY")
  with _sim_server_for(cfg, api_key="the-right-key") as server:
    cfg = _config_file(tmp_path, server.base_url, key_env="HIERAMAS_TEST_KEY")
    proc, elapsed = _launch_train(cfg, tmp_path / "run", env={"HIERAMAS_TEST_KEY": "a-wrong-key"})
    assert server.server.stats.completed == 0  # no paid call was made
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert elapsed < 30, elapsed
  last = _last_line(proc.stderr)
  assert last.startswith("launch.train: EndpointError: "), proc.stderr[-3000:]
  for name, _ in _POOL:
    assert f"'{name}' at {server.base_url}: HTTP 401 unauthorized (check the API key in $HIERAMAS_TEST_KEY)" in last
  assert "a-wrong-key" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
  _assert_nothing_saved(tmp_path / "run")


@pytest.mark.slow  # 6-10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_a_step_whose_calls_all_fail_stops_the_run_and_saves_nothing(tmp_path):
  # Preflight passes (probes do not meet first-attempt faults); then every call fails twice, which with
  # max_retries=1 is every attempt the client makes.
  cfg = _config_file(tmp_path, "http://127.0.0.1:1/v1", max_retries=1)
  with _sim_server_for(cfg, faults=FaultConfig(first_attempts=2, first_kind="500")) as server:
    cfg = _config_file(tmp_path, server.base_url, max_retries=1)
    proc, _ = _launch_train(cfg, tmp_path / "run")
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = _last_line(proc.stderr)
  assert last.startswith("launch.train: FailedCallsError: stage 1 step 1: 4 of 4 queries failed (first error: "), last
  assert "HTTP 500" in last and last.endswith("check the endpoints or raise llm.max_failed_fraction (now 0.5)")
  assert "Traceback" not in proc.stderr and "Unclosed client session" not in proc.stderr
  _assert_nothing_saved(tmp_path / "run")


@pytest.mark.slow  # over 10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_a_run_over_http_closes_its_sessions_then_evaluate_stops_at_the_dead_endpoint(tmp_path):
  cfg = _config_file(tmp_path, "http://127.0.0.1:1/v1")
  with _sim_server_for(cfg) as server:
    cfg = _config_file(tmp_path, server.base_url)
    proc, _ = _launch_train(cfg, tmp_path / "run")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Unclosed" not in proc.stderr, proc.stderr[-3000:]

  def refuse(constant):
    raise ValueError(f"summary.json holds {constant}, which is not JSON")

  summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
  assert summary["test"]["selector_random_dag"]["failed"] == 0.0
  # The server is gone: evaluating the run stops at the preflight, in one line.
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--config={cfg}", f"--workdir={tmp_path / 'run'}",
                         "--methods=single"], cwd=REPO, capture_output=True, text=True, timeout=240,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1 and time.monotonic() - start < 30, proc.stderr[-3000:]
  last = _last_line(proc.stderr)
  assert last.startswith("launch.evaluate: EndpointError: "), proc.stderr[-3000:]
  assert all(f"'{name}' at {server.base_url}: connection refused" in last for name, _ in _POOL), last
  assert "Traceback" not in proc.stderr and "Unclosed" not in proc.stderr
  assert not (tmp_path / "run" / "eval").exists()


# ---------------------------------------------------------------------------
# Training in process: failed queries are masked, a failing step saves nothing
# ---------------------------------------------------------------------------


class Wrapped:
  """Delegates to a backend; ``fail(model, sample_index)`` calls fail, ``text`` replaces every answer."""

  def __init__(self, backend, fail=None, text=None):
    self.backend = backend  # also how HieraMAS finds the simulator to register problems with
    self.fail = fail or (lambda model, sample_index: False)
    self.text = text

  def known_models(self):
    return self.backend.known_models()

  async def complete(self, model, messages, *, sample_index=0, **params):
    if self.fail(model, sample_index):
      return error_response(model, f"connection refused (scripted, {model} at http://127.0.0.1:1/v1)")
    if self.text is not None:
      return Response(model=model, text=self.text, usage=Usage(10, 5), cost=1e-5, finish_reason="stop")
    return await self.backend.complete(model, messages, sample_index=sample_index, **params)


def _sim_backend(workdir):
  """The smoke config's simulated pool, every split registered, without a response cache."""
  c = tiny_config(**{"llm.cache": False})
  task = environment.load_task(c)
  problems = [p for split in environment.load_splits(c, task).values() for p in split]
  return environment.make_backend(c, environment.pool_specs(c), task, problems, workdir)


def test_stage1_stops_at_the_step_whose_calls_fail_without_its_checkpoint(tmp_path):
  config = tiny_config(**{"stages": "stage1", "checkpoint.every_steps": 1})
  # Step s (1-based) samples plans (s * group_size + g): from step 3 on, sample >= 6, i.e. sample_index >= 6000.
  backend = Wrapped(_sim_backend(tmp_path), fail=lambda model, sample_index: sample_index >= 6000)
  with pytest.raises(train.FailedCallsError, match=r"^stage 1 step 3: 4 of 4 queries failed \(first error: "):
    train.train_and_evaluate(config, tmp_path / "run", progress=False, backend=backend)
  with checkpointing.Checkpointer(tmp_path / "run" / "checkpoints" / "stage1") as ck:
    assert ck.all_steps() == [1, 2]
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["stage"] == "stage1"] == [1, 2]
  assert not (tmp_path / "run" / "summary.json").exists()


def test_queries_with_a_failed_role_call_are_masked_not_graded(tmp_path):
  config = tiny_config()
  failing = "Qwen3-8B"
  backend = Wrapped(_sim_backend(tmp_path), fail=lambda model, sample_index: model == failing)
  env = environment.build_environment(config, tmp_path / "run", backend=backend)
  try:
    problems = env.splits["test"][:4]
    names = env.model_names
    # The first two queries put the failing model at a proposer position; the decision model always answers.
    actions = [[[names.index(failing) if q < 2 and p == 0 else names.index("GPT-4o-mini") for p in range(3)]
                for _ in range(env.num_roles)] for q in range(4)]
    chain = [[[1 if j == i + 1 else 0 for j in range(env.num_roles)] for i in range(env.num_roles)]] * 4
    plans = rollout.make_plans(env, problems, np.array(actions), np.array(chain), sample=0)
    outcome = rollout.run_plans(env, problems, plans, where="test batch")
    assert outcome.valid.tolist() == [False, False, True, True]
    assert all(r.final_text is not None for r in outcome.results)  # the decision answered, yet not graded
    assert not outcome.final_solved[:2].any() and not outcome.node_solved[:2].any()
    with pytest.raises(train.FailedCallsError, match=r"^test batch: 2 of 4 queries failed .*raise "
                                                     r"llm\.max_failed_fraction \(now 0\.4\)$"):
      env.config.llm.max_failed_fraction = 0.4
      rollout.run_plans(env, problems, plans, where="test batch")
  finally:
    env.close()


def test_stage2_without_positive_labels_trains_no_classifier_and_loading_says_so(tmp_path):
  config = tiny_config()
  wrong = Wrapped(_sim_backend(tmp_path), text="so \\boxed{-987654321}")  # nothing is ever solved
  summary = train.train_and_evaluate(config, tmp_path / "run", progress=False, backend=wrong)
  assert "no positive label" in summary["stage2"]["skipped"]
  assert "hieramas" not in summary["test"]  # no classifier: no row that claims one

  def refuse(constant):
    raise ValueError(f"summary.json holds {constant}, which is not JSON")

  written = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
  assert written["stage2"]["best_val_auc"] is None
  assert not (tmp_path / "run" / "checkpoints" / "stage2").exists()
  with HieraMAS.from_workdir(tmp_path / "run", backend=wrong) as system:
    assert not system.has_classifier and system.graph_choice == "random"
    assert "no positive label" in system.graph_choice_reason and "random" in system.graph_choice_reason


# ---------------------------------------------------------------------------
# Evaluation under faults: the verdicts of every query not reported failed are the clean ones
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("faults") / "run"
  train.train_and_evaluate(tiny_config(), workdir, progress=False)
  return workdir


def _evaluate_over_http(workdir, out, faults, methods, *, max_retries=1, timeout_s=2.0):
  config = tiny_config(**{"task.num_test": 24, "llm.max_failed_fraction": 0.9})
  task = environment.load_task(config)
  problems = [p for split in environment.load_splits(config, task).values() for p in split]
  specs = environment.pool_specs(config)
  simulated = sim.SimulatedBackend(sim.default_world(seed=config.llm.sim_seed, pool=specs), task, problems)
  with ServerThread(SimServer(simulated, faults=faults)) as server:
    client = OpenAIBackend([dataclasses.replace(s, base_url=server.base_url, api_key_env=None) for s in specs],
                           max_concurrency=16, timeout_s=timeout_s, seed_from_sample_index=True,
                           retry=RetryPolicy(max_retries=max_retries, base_delay_s=0.001, max_delay_s=0.01))
    try:
      return evaluation.evaluate(config, workdir, out, methods=methods, backend=client, log=lambda s: None)
    finally:
      executor.close_backend(client)


@pytest.mark.slow
def test_faulty_evaluation_agrees_with_the_clean_one_on_every_query_not_failed(trained, tmp_path):
  methods = ("single", "self_consistency", "mixture", "hieramas")
  clean = _evaluate_over_http(trained, tmp_path / "clean", FaultConfig(), methods)
  clean_rows = {r["method"]: r for r in clean["rows"]}
  # 15% of the requests fail (3% each of 429, 500, malformed body, empty choices, a stall past the client's
  # timeout). Without retries many calls fail; with two retries few do and the others are answered on a retry.
  faults = FaultConfig(rate_429=0.03, rate_500=0.03, rate_malformed=0.03, rate_empty=0.03, rate_stall=0.03,
                       stall_s=3.0, retry_after_s=0.01, seed=3)
  for max_retries in (0, 2):
    faulty = _evaluate_over_http(trained, tmp_path / f"faulty{max_retries}", faults, methods,
                                 max_retries=max_retries)
    faulty_rows = {r["method"]: r for r in faulty["rows"]}
    graded = failed = 0
    for method in methods:
      want, got = clean["per_query"]["solved"][method], faulty["per_query"]["solved"][method]
      assert None not in want and clean_rows[method]["failed"] == 0
      for i, verdict in enumerate(got):
        if verdict is None:
          failed += 1
        else:
          graded += 1
          assert verdict == want[i], (max_retries, method, i)
      assert faulty_rows[method]["failed"] == got.count(None)
    if max_retries == 0:  # both kinds occur, or the comparison proves nothing
      assert failed >= 10 and graded >= 20, (graded, failed)


def test_truncated_replies_are_counted_in_the_table(trained, tmp_path):
  results = _evaluate_over_http(trained, tmp_path / "length", FaultConfig(rate_length=0.5, seed=1), "single")
  (row,) = results["rows"]
  assert row["failed"] == 0 and 0 < row["truncated"] < row["queries"]
  header = (tmp_path / "length" / "table.md").read_text().splitlines()[0]
  assert "| truncated |" in header

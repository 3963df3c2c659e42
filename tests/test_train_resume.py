"""SIGKILL mid stage 1, re-run the same command: resumes, repeats no LLM call, ends equal."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from hieramas_jax import checkpointing, policy
from hieramas_jax import config as base_config
from hieramas_jax.llm import cache as llm_cache
from hieramas_jax.llm import sim
from hieramas_jax.llm.sim_http import ServerThread, SimServer
from hieramas_jax.train import builders, environment

_REPO = pathlib.Path(__file__).resolve().parent.parent
_STEPS = 24


class CountingBackend(sim.SimulatedBackend):
  """Records every request the server answers, by (model, messages, sample index)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.seen: dict[tuple, int] = {}

  def answer(self, model, messages, sample_index=0):
    key = (model, json.dumps(messages, sort_keys=True), sample_index)
    self.seen[key] = self.seen.get(key, 0) + 1
    return super().answer(model, messages, sample_index)


def _config_file(tmp: pathlib.Path, url: str) -> pathlib.Path:
  path = tmp / "resume_config.py"
  path.write_text(textwrap.dedent(f"""
      from hieramas_jax import config as base

      def get_config(arg=None):
        c = base.base_config("math", "smoke")
        c.stages = "stage1"
        c.encoder.kind = "hashing"
        c.llm.backend = "openai"
        c.llm.pool = "config"
        c.llm.models = [dict(name=n, base_url={url!r}, api_key_env=None, price_in_per_m=p, price_out_per_m=4 * p,
                             profile="model " + n) for n, p in (("A", 0.1), ("B", 0.3), ("C", 0.05))]
        c.llm.decision_model = "A"
        c.stage1.steps = {_STEPS}
        c.stage1.eval_every = 6
        c.checkpoint.every_steps = 4
        return c
  """))
  return path


def _world_and_problems(cfg_path):
  c = base_config.load_config_file(cfg_path)
  task = environment.load_task(c)
  splits = environment.load_splits(c, task)
  specs = environment.pool_specs(c)
  return c, task, [p for s in splits.values() for p in s], specs


def _train(cfg_path, workdir, **popen):
  cmd = [sys.executable, "-m", "launch.train", f"--config={cfg_path}", f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), **popen)


def _stage1_rows(workdir: pathlib.Path) -> list[int]:
  """Stage-1 steps of metrics.jsonl in file order (a line being written as it is read is skipped)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue
  return [r["step"] for r in rows if r["stage"] == "stage1"]


def _stage1_steps_done(workdir: pathlib.Path) -> int:
  return max(_stage1_rows(workdir), default=0)


def _final_params(c, workdir):
  graphdef, params = builders.build_selector(c, 256, 256)
  with checkpointing.Checkpointer(workdir / "checkpoints" / "stage1") as ck:
    template = policy.selector_train_state(params, policy.optimizer_template(params), np.zeros(3), params, 0.0,
                                           np.zeros((4, 256), np.float32))
    restored, meta = policy.restore_train_state(ck, template)
  return restored["params"], meta["step"]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_without_repeated_calls_and_matches(tmp_path):
  placeholder = _config_file(tmp_path, "http://127.0.0.1:1/v1")
  c, task, problems, specs = _world_and_problems(placeholder)
  world = sim.default_world(seed=0, pool=specs)
  counting = CountingBackend(world, task, problems)
  reference = sim.SimulatedBackend(world, task, problems)
  with ServerThread(SimServer(counting, latency_s=0.002)) as server, \
       ServerThread(SimServer(reference, latency_s=0.002)) as server_ref:
    cfg = _config_file(tmp_path, server.base_url)
    cfg_ref = tmp_path / "ref" / "cfg.py"
    cfg_ref.parent.mkdir()
    cfg_ref.write_text(cfg.read_text().replace(server.base_url, server_ref.base_url))

    interrupted = tmp_path / "interrupted"
    proc = _train(cfg, interrupted)
    deadline = time.monotonic() + 240
    while _stage1_steps_done(interrupted) < 10 and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _stage1_steps_done(interrupted)
    assert killed_at < _STEPS
    with checkpointing.Checkpointer(interrupted / "checkpoints" / "stage1") as ck:
      last_ckpt = ck.latest_step()
    assert last_ckpt is not None and last_ckpt <= killed_at
    answered_before_kill = set(counting.seen)
    stored = len(llm_cache.ResponseCache(interrupted / "llm_cache.sqlite"))
    # Requests the server answered whose response the killed client never stored (in flight at the kill).
    in_flight_at_kill = len(answered_before_kill) - stored
    assert 0 <= in_flight_at_kill <= c.llm.max_concurrency

    rerun = _train(cfg, interrupted)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    assert f"resumed from step {last_ckpt}" in out
    # Steps redone after the checkpoint are in metrics.jsonl once, not twice; every line is strict JSON.
    assert _stage1_rows(interrupted) == list(range(1, _STEPS + 1))
    for line in (interrupted / "metrics.jsonl").read_text().splitlines():
      json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    repeated = {k: n for k, n in counting.seen.items() if n > 1}
    # Work already done (stored responses) is never asked again; at most the calls in flight at the kill are.
    assert all(k in answered_before_kill and n == 2 for k, n in repeated.items())
    assert len(repeated) <= in_flight_at_kill, (len(repeated), in_flight_at_kill)

    fresh = tmp_path / "uninterrupted"
    full = _train(cfg_ref, fresh)
    out_ref, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out_ref[-3000:]

  params_a, step_a = _final_params(c, interrupted)
  params_b, step_b = _final_params(c, fresh)
  assert step_a == step_b == _STEPS
  la, lb = jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))

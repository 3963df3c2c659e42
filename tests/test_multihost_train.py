"""launch.train on 2 local processes (gloo, 2 CPU devices each) against the same command in 1 process.

The acceptance of issue 19 for training: the same episodes and rewards, the same
losses and final policy within float tolerance, both stages; process 0 alone
writes metrics and summary; a checkpoint written by 2 processes resumes in 1 and
one written by 1 resumes in 2; a killed process stops the other with one line; a
saved config of another experiment is the same one-line error on every process.
Default run: the padding check and the 1-vs-2 equality; the rest is slow.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hieramas_jax import config as base_config
from hieramas_jax import distributed
from hieramas_jax.models import gcn
from hieramas_jax.models import selector as sel
from hieramas_jax.train import builders, learner
from tests import multihost

# Tiny sizes; stage 1's batch (6) and stage 2's (10) do not divide the 4 devices of 2 processes, so both updates
# run on padded batches.
CONFIG_ARG = ("smoke,encoder.kind=hashing,task.num_val=4,task.num_test=4,stage1.steps=2,stage1.eval_every=2,"
              "stage1.batch_size=6,checkpoint.every_steps=1,stage2.graphs_per_query=4,stage2.samples_per_graph=1,"
              "stage2.batch_size=10,stage2.epochs=2")
CONFIG = f"configs/math.py:{CONFIG_ARG}"
TIMEOUT_S = 400
# Metrics that depend only on the episodes drawn and graded: equal bit for bit in 1 and 2 processes.
EXACT = ("temperature", "reward", "accuracy", "cost", "failed", "val_reward", "val_reward_se", "val_accuracy",
         "val_cost", "val_failed", "train_positives", "train_negatives", "pos_weight", "train_queries_ranked",
         "train_queries", "val_auc", "val_queries_counted")
# Sums over the batch: reduced over 4 devices in 2 processes, so equal to float rounding only.
APPROX = ("loss", "pg_loss", "entropy", "grad_norm")


def _argv(workdir: pathlib.Path, *extra: str) -> list[str]:
  return ["-m", "launch.train", f"--config={CONFIG}", f"--workdir={workdir}", *extra]


def _start_single(argv: list[str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *argv], cwd=multihost.REPO, env=multihost.process_env(2),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish_single(proc: subprocess.Popen, timeout_s: float = TIMEOUT_S) -> multihost.Finished:
  try:
    out, err = proc.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    multihost.kill_all([proc])
    raise TimeoutError(f"1-process run still going after {timeout_s} s") from None
  return multihost.Finished(proc.returncode, out, err)


def _ok(finished: multihost.Finished) -> None:
  assert finished.returncode == 0, finished.stderr[-3000:] + finished.stdout[-2000:]


def _rows(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _newest_state(workdir: pathlib.Path, stage: str) -> tuple[int, dict]:
  folder = workdir / "checkpoints" / stage
  step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  return step, ocp.StandardCheckpointer().restore(folder / str(step) / "state")


def _selector_log_probs(state: dict) -> np.ndarray:
  """The trained selector's log-probabilities on fixed random inputs: the policy its parameters are."""
  config = base_config.load_config_file(multihost.REPO / "configs" / "math.py", CONFIG_ARG)
  option_emb = np.asarray(state["option_emb"])
  graphdef, _ = builders.build_selector(config, 256, option_emb.shape[-1])  # the hashing encoder's 256 dims
  qr = np.random.default_rng(0).normal(size=(8, 3, 256)).astype(np.float32)
  valid = sel.SelectionMask.build(8, 3, config.selector.num_proposers, option_emb.shape[0] - 1).valid
  logits = sel.selector_logits(graphdef, state["params"], jnp.asarray(qr), jnp.asarray(option_emb))
  lp = np.asarray(sel.log_probs(logits, valid, 1.0))
  return np.where(np.asarray(valid), lp, 0.0)


def _assert_same_training(reference: pathlib.Path, other: pathlib.Path) -> None:
  """Both workdirs trained alike: the metrics rows, the summary and the final parameters of both stages."""
  want, got = _rows(reference), _rows(other)
  assert [(r["stage"], r["step"]) for r in got] == [(r["stage"], r["step"]) for r in want]
  for a, b in zip(want, got):
    where = f"{a['stage']} step {a['step']}"
    for key in EXACT:
      assert a.get(key) == b.get(key), (where, key, a.get(key), b.get(key))
    for key in APPROX:
      if key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"{where} {key}")
  summary_a = json.loads((reference / "summary.json").read_text())
  summary_b = json.loads((other / "summary.json").read_text())
  assert "skipped" not in summary_a["stage2"]  # a classifier was trained: stage 2's update ran
  for key in ("test", "stage1", "stage2"):
    assert summary_a[key] == summary_b[key], key
  step_a, stage1_a = _newest_state(reference, "stage1")
  step_b, stage1_b = _newest_state(other, "stage1")
  assert step_a == step_b
  # Adam moves a parameter whose true gradient is zero (a bias that shifts every option's logit alike: softmax
  # ignores it) by up to its learning rate per step, on the sign of rounding noise; the policy does not change.
  config = base_config.load_config_file(multihost.REPO / "configs" / "math.py", CONFIG_ARG)
  drift = config.stage1.learning_rate * config.stage1.steps
  for x, y in zip(jax.tree_util.tree_leaves(stage1_a), jax.tree_util.tree_leaves(stage1_b)):
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64), rtol=0, atol=drift)
  np.testing.assert_allclose(_selector_log_probs(stage1_b), _selector_log_probs(stage1_a), rtol=0, atol=1e-5)
  _, stage2_a = _newest_state(reference, "stage2")
  _, stage2_b = _newest_state(other, "stage2")
  for x, y in zip(jax.tree_util.tree_leaves(stage2_a), jax.tree_util.tree_leaves(stage2_b)):
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64), rtol=1e-5, atol=1e-5)


class _Reference:
  """The uninterrupted 1-process run every multi-process run is compared with, started at once in the background
  (it runs beside the first test's processes) and waited for on first use."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = workdir
    self.proc = _start_single(_argv(workdir))
    self.finished = None

  def path(self) -> pathlib.Path:
    if self.finished is None:
      self.finished = _finish_single(self.proc)
    _ok(self.finished)
    return self.workdir


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  reference = _Reference(tmp_path_factory.mktemp("one_process") / "run")
  yield reference
  multihost.kill_all([reference.proc])


# ---------------------------------------------------------------------------
# Padding: rows of zero weight change neither loss nor gradient
# ---------------------------------------------------------------------------


@pytest.mark.slow  # 6-10 s: CI runs it with the slow set (the default run stays under 10 minutes)
def test_padded_rows_change_neither_loss_nor_gradient():
  """What the data-parallel updates rely on: a batch padded with zero rows (``distributed.pad_rows``) trains alike."""
  config = base_config.base_config("math", "smoke")
  graphdef, params = builders.build_selector(config, 8, 8)
  rng = np.random.default_rng(0)
  b, r, p, m = 6, 3, config.selector.num_proposers, 3
  valid = sel.SelectionMask.build(b, r, p, m).valid
  actions = sel.sample(jax.random.key(0), jnp.zeros(valid.shape), valid, 1.0)
  batch = learner.SelectorBatch(jnp.asarray(rng.normal(size=(b, r, 8)), jnp.float32),
                                jnp.asarray(rng.normal(size=(m + 1, 8)), jnp.float32), valid, actions,
                                jnp.asarray(rng.normal(size=(b, r)), jnp.float32),
                                jnp.asarray(rng.normal(size=(b, r)), jnp.float32), jnp.asarray([1, 1, 0, 1, 1, 1.0]))
  rows, count = distributed.pad_rows(batch._replace(option_emb=None), 4)
  assert count == b and rows.weights.shape == (8,)
  padded = rows._replace(option_emb=batch.option_emb)
  loss = jax.jit(jax.value_and_grad(learner.reinforce_loss, has_aux=True), static_argnums=1)  # eager: slow
  (want, want_aux), want_grad = loss(params, graphdef, batch, 1.7, 0.01)
  (got, got_aux), got_grad = loss(params, graphdef, padded, 1.7, 0.01)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_aux["entropy"], want_aux["entropy"], rtol=1e-6)
  for x, y in zip(jax.tree_util.tree_leaves(want_grad), jax.tree_util.tree_leaves(got_grad)):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)

  cls_graphdef, cls_params = builders.build_classifier(config, r, 8)
  adjs = np.triu(rng.integers(0, 2, size=(5, 4, r, r)), 1).astype(np.float32)
  cls_batch = learner.ClassifierBatch(jnp.asarray(rng.normal(size=(5, 8)), jnp.float32), jnp.asarray(adjs),
                                      jnp.asarray(rng.integers(0, 2, size=(5, 4)), jnp.float32),
                                      jnp.asarray(rng.integers(0, 2, size=(5, 4)), jnp.float32), jnp.ones((r,)))
  cls_rows, _ = distributed.pad_rows(cls_batch._replace(role_mask=None), 4)
  cls_padded = cls_rows._replace(role_mask=cls_batch.role_mask)
  cls_loss = jax.jit(jax.value_and_grad(learner.classifier_loss), static_argnums=(1, 4))
  for impl in gcn.IMPLEMENTATIONS:  # every form a gradient step may take (gcn.training_impl)
    want, want_grad = cls_loss(cls_params, cls_graphdef, cls_batch, 2.0, impl)
    got, got_grad = cls_loss(cls_params, cls_graphdef, cls_padded, 2.0, impl)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(want_grad), jax.tree_util.tree_leaves(got_grad)):
      np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# 1 process vs 2
# ---------------------------------------------------------------------------


@pytest.mark.slow  # with the other launch.train comparisons; the default run keeps test_distributed's
def test_two_processes_train_as_one(reference_run, tmp_path):
  workdir = tmp_path / "two"
  procs = multihost.start_processes(_argv(workdir), 2)
  done = multihost.wait_all(procs, TIMEOUT_S)
  for finished in done:
    _ok(finished)
  _assert_same_training(reference_run.path(), workdir)
  # Process 0 alone locked the workdir, wrote each metrics row and reported; process 1 stayed quiet.
  assert (workdir / ".lock").read_text().strip() == str(procs[0].pid)
  assert "Held-out test split" in done[0].stdout and "Held-out test split" not in done[1].stdout
  assert "stage 1 (selector)" not in done[1].stderr  # one progress bar per run


# ---------------------------------------------------------------------------
# Resuming across process counts, and a lost process (slow)
# ---------------------------------------------------------------------------


def _wait_for_row(workdir: pathlib.Path, stage: str, procs, deadline_s: float = TIMEOUT_S) -> None:
  deadline = time.monotonic() + deadline_s
  path = workdir / "metrics.jsonl"
  while time.monotonic() < deadline:
    if path.exists() and any(f'"stage": "{stage}"' in line for line in path.read_text().splitlines()):
      return
    if any(p.poll() is not None for p in procs):
      return
    time.sleep(0.05)
  multihost.kill_all(procs)
  raise TimeoutError(f"no {stage} row in {path} after {deadline_s} s")


@pytest.mark.slow
def test_stopped_by_signal_on_two_processes_resumes_on_one(reference_run, tmp_path):
  """SIGTERM to process 1 alone: both stop after the same step (exit 0); 1 process resumes and ends alike."""
  workdir = tmp_path / "two_then_one"
  procs = multihost.start_processes(_argv(workdir), 2)
  _wait_for_row(workdir, "stage1", procs)
  procs[1].send_signal(signal.SIGTERM)
  done = multihost.wait_all(procs, TIMEOUT_S)
  stops = []
  for finished in done:
    _ok(finished)
    stops.append(next((ln for ln in finished.stdout.splitlines() if ln.startswith("stopped by signal")), None))
  assert stops[0] is not None and stops[0] == stops[1], stops  # both stopped, after the same step
  assert not (workdir / "summary.json").exists()
  resumed = _finish_single(_start_single(_argv(workdir)))
  _ok(resumed)
  assert "resumed from" in resumed.stdout
  _assert_same_training(reference_run.path(), workdir)


@pytest.mark.slow
def test_stage1_of_one_process_resumes_on_two(reference_run, tmp_path):
  """Stage 1 trained and saved by 1 process; 2 processes restore it, train stage 2 and end alike."""
  workdir = tmp_path / "one_then_two"
  _ok(_finish_single(_start_single(_argv(workdir, "--config.stages=stage1"))))
  done = multihost.wait_all(multihost.start_processes(_argv(workdir), 2), TIMEOUT_S)
  for finished in done:
    _ok(finished)
  assert "stage 1: resumed from step 2" in done[0].stdout
  _assert_same_training(reference_run.path(), workdir)


@pytest.mark.slow
def test_killed_process_stops_the_other_with_one_line(tmp_path):
  workdir = tmp_path / "killed"
  # Many steps, so process 1 dies mid stage 1.
  procs = multihost.start_processes(_argv(workdir, "--config.stage1.steps=500"), 2, heartbeat_timeout_s=5)
  _wait_for_row(workdir, "stage1", procs)
  assert all(p.poll() is None for p in procs), "a process ended before the kill"
  os.killpg(procs[1].pid, signal.SIGKILL)
  started = time.monotonic()
  try:
    out, err = procs[0].communicate(timeout=90)
  except subprocess.TimeoutExpired:
    multihost.kill_all(procs)
    pytest.fail("process 0 still running 90 s after process 1 was killed (a hang)")
  procs[1].wait()
  assert procs[0].returncode != 0
  last = err.strip().splitlines()[-1]
  # The watchdog names the lost process; when process 0 was inside a collective (an update, a checkpoint's sync)
  # as process 1 died, the collective's failure is the line. Either way: one line, no traceback.
  assert (last.startswith("hieramas: process 1 of the 2 in this run stopped")
          or last.startswith("launch.train: PeerLostError: a computation across the 2 processes failed")), \
      err[-2000:]
  assert "Traceback" not in err
  assert time.monotonic() - started < 90


@pytest.mark.slow
def test_resume_mismatch_is_the_same_error_on_every_process(reference_run):
  """Process 0 checks the workdir; every process reads the saved config and fails with the same line."""
  workdir = reference_run.path()
  done = multihost.wait_all(multihost.start_processes(_argv(workdir, "--config.seed=5"), 2), TIMEOUT_S)
  lines = [finished.stderr.strip().splitlines()[-1] for finished in done]
  assert [finished.returncode for finished in done] == [1, 1], lines
  assert lines[0] == lines[1] and lines[0].startswith("launch.train: ResumeMismatchError: "), lines
  assert "seed 0 -> 5" in lines[0]
  assert not any("Traceback" in finished.stderr for finished in done)

"""The training driver: stage 1, stage 2 and the held-out comparison, resuming from a workdir.

A run that cannot work stops with an exception naming the cause and the fix:
``llm.preflight.EndpointError`` (an endpoint of the pool does not answer, checked
before any work), ``environment.ConfigError`` (``workdir.WorkdirError`` and
``workdir.ResumeMismatchError`` among them), ``executor.FailedCallsError`` (too
many failed queries in one step; nothing of that step is saved) and
FileNotFoundError (stage 2 without stage 1). A SIGTERM or SIGINT ends the current
step, saves a checkpoint and raises ``preemption.StopRequested``. The driver
prints nothing of its own; ``launch.train`` prints ``summary_lines`` on success,
turns a failure into one stderr line with exit status 1, and a stop into its
message with exit status 0.

Multi-host (``hieramas_jax.distributed``, one process per host): every process
runs this with the same config and the same workdir path, which must be one
folder they all see (a shared filesystem). Each process runs its share of every
batch's LLM calls against its own endpoints; the updates are data-parallel over
every device of every process; process 0 alone locks the workdir and writes
metrics.jsonl, stage2_data/ and summary.json; checkpoints are written by all
together. Every process returns the same summary.
"""

from __future__ import annotations

import math
import pathlib

import jax
import ml_collections

from hieramas_jax import distributed, jsonio
from hieramas_jax.train import environment, evaluation, stage1, stage2
from hieramas_jax.train import workdir as workdir_lib
from hieramas_jax.train.metric_writer import MetricWriter
from hieramas_jax.train.preemption import PreemptionWatcher


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, backend=None, encoder=None) -> dict:
  """Runs the configured stages (resuming from ``workdir``) and compares on the test split.

  Returns the summary that is also written to ``workdir/summary.json`` (strict
  JSON: a figure no query counted for is null). A given ``backend`` stays open;
  one built here is closed at the end, whatever happens.

  Raises:
    preemption.StopRequested: a signal asked to stop; the last step's checkpoint is saved.
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir_lib.prepare(config, workdir)  # writable, locked for this run, saved config agrees
  env = environment.build_environment(config, workdir, backend=backend, encoder=encoder)
  writer = MetricWriter(workdir)
  summary: dict = {"workdir": str(workdir), "metrics": str(writer.path)}
  try:
    with PreemptionWatcher() as watcher:
      # The policy passes from stage to stage: stage 1 trains its selector, stage 2 adds the classifier.
      if config.stages in ("both", "stage1"):
        s1 = stage1.train_selector(env, workdir, writer, watcher, progress=progress)
        trained = s1.policy
        summary["stage1"] = {"best_val_reward": s1.best_val_reward, "history": s1.history}
      else:
        trained = stage1.load_policy(env, workdir)
      if config.stages in ("both", "stage2"):
        s2 = stage2.train_classifier(env, workdir, writer, trained, watcher, progress=progress)
        trained = s2.policy
        summary["stage2"] = {"best_val_auc": s2.best_val_auc, "history": s2.history}
        if s2.skipped:
          summary["stage2"]["skipped"] = s2.skipped
      classifier = trained.classifier or (None, None)
      summary["test"] = evaluation.compare_on_split(env, *trained.selector, *classifier, stage2.candidate_pool(env))
  except jax.errors.JaxRuntimeError as e:
    if not distributed.is_multi_process():
      raise
    raise _collective_failed(e) from e
  finally:
    writer.close()
    if backend is None:  # the caller's backend is the caller's to close
      env.close()
  summary["checkpoints"] = str(workdir / "checkpoints")
  if distributed.is_primary():  # every process holds the same summary: one writes it
    (workdir / "summary.json").write_text(jsonio.strict_json(summary))
  return summary


def _collective_failed(error: Exception) -> distributed.PeerLostError:
  """A JAX error of a multi-host run as one line: mostly a collective that failed because a process died.

  A process that dies while the others are inside a collective (an update's
  gradient mean, a checkpoint's sync) fails it with a transport error (gloo:
  'Connection reset by peer') before the watchdog names the lost process.
  """
  text = str(error).strip()
  first_line = text.splitlines()[0] if text else ""
  return distributed.PeerLostError(
      f"a computation across the {distributed.process_count()} processes failed ({type(error).__name__}: "
      f"{first_line}); if another process of the run stopped, its log says why; then start every process again "
      "with the same command (training resumes from the last checkpoint)")


def _figure(value: float | None, spec: str) -> str:
  """A number for the console; 'n/a' where no query counted (None or NaN)."""
  return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def summary_lines(summary: dict) -> list[str]:
  """The console report of a finished run: the held-out table and where its files are."""
  lines = ["Held-out test split (mean per query without a failed call):"]
  for name, row in summary["test"].items():
    lines.append(f"  {name:30s} reward {_figure(row['reward'], '+.3f')}  accuracy {_figure(row['accuracy'], '.3f')}  "
                 f"cost ${_figure(row['cost_usd'], '.5f')}  calls {_figure(row['calls'], '.1f')}  "
                 f"failed {row['failed']:.1%}  truncated {row['truncated']}")
  if summary.get("stage2", {}).get("skipped"):
    lines.append(f"No graph classifier: {summary['stage2']['skipped']}")
  lines.append(f"Checkpoints: {summary['checkpoints']}")
  lines.append(f"Metrics:     {summary['metrics']}")
  lines.append(f"Summary:     {pathlib.Path(summary['workdir']) / 'summary.json'}")
  return lines

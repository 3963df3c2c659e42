"""Training entry point used by launch/train.py: stage 1, stage 2, held-out comparison."""

from __future__ import annotations

import json
import pathlib

import ml_collections

from hieramas_jax.train import environment, evaluation, stage1, stage2
from hieramas_jax.train.metric_writer import MetricWriter
from hieramas_jax.train.preemption import PreemptionWatcher, StopRequested


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       progress: bool = True, backend=None, encoder=None) -> dict:
  """Runs the configured stages (resuming from ``workdir``) and compares on the test split.

  Returns the summary that is also written to ``workdir/summary.json``.
  """
  workdir = pathlib.Path(workdir).absolute()
  env = environment.build_environment(config, workdir, backend=backend, encoder=encoder)
  writer = MetricWriter(workdir)
  summary: dict = {"workdir": str(workdir), "metrics": str(writer.path)}
  try:
    with PreemptionWatcher() as watcher:
      if config.stages in ("both", "stage1"):
        s1 = stage1.train_selector(env, workdir, writer, watcher, progress=progress)
        sel_graphdef, sel_params = s1.graphdef, s1.params
        summary["stage1"] = {"best_val_reward": s1.best_val_reward, "history": s1.history}
      else:
        sel_graphdef, sel_params = stage1.load_selector(env, workdir)
      cls_graphdef = cls_params = None
      if config.stages in ("both", "stage2"):
        s2 = stage2.train_classifier(env, workdir, writer, sel_graphdef, sel_params, watcher, progress=progress)
        cls_graphdef, cls_params = s2.graphdef, s2.params
        summary["stage2"] = {"best_val_auc": s2.best_val_auc, "history": s2.history}
      pool = stage2.candidate_pool(env)
      summary["test"] = evaluation.compare_on_split(env, sel_graphdef, sel_params, cls_graphdef, cls_params, pool)
  except StopRequested as stop:
    print(str(stop))
    summary["stopped"] = str(stop)
    raise SystemExit(0) from None
  finally:
    writer.close()
    env.close()
  summary["checkpoints"] = str(workdir / "checkpoints")
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  print("Held-out test split (mean per query):")
  for name, row in summary["test"].items():
    print(f"  {name:30s} reward {row['reward']:+.3f}  accuracy {row['accuracy']:.3f}  "
          f"cost ${row['cost_usd']:.5f}  calls {row['calls']:.1f}")
  print(f"Checkpoints: {summary['checkpoints']}")
  print(f"Metrics:     {summary['metrics']}")
  print(f"Summary:     {workdir / 'summary.json'}")
  return summary

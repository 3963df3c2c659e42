"""Stage 2: train the graph classifier on ranked random DAGs under the frozen selector.

For every training and validation query, the frozen selector's assignment (its
argmax under the inference rules, as HieraMAS will run it) runs on G random DAGs (density in ``graphs.stage2_density_range``);
the DAGs are ranked by system reward, with stage 2's own c_s
(``reward.stage2_cost_solved``), and the top-k solved ones are labelled positive. The GCN is trained with class-weighted
BCE; the epoch with the best mean per-query ROC-AUC on the validation queries is
kept. Labels are stored in the workdir, so a resumed run does not re-execute;
a collection with too many failed queries raises ``executor.FailedCallsError``
and stores nothing. Only queries with both a positive and a negative DAG are
trained on (the others rank nothing). Training data without a single positive
label (no solved run), or without a query that has both, cannot teach a
classifier: stage 2 then says so, trains and saves none, and
inference draws the documented seeded random DAG per query (``untrained_reason``
tells loaders why, also for workdirs written before this check).

Multi-host: the collection runs each process's share of the (query, DAG) runs
(``rollout.run_plans``); process 0 alone stores the labels and the others get
its stored data; the gradient steps are data-parallel over every device of
every process, so 1 and N processes train alike (to float rounding).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hieramas_jax import checkpointing, distributed, policy
from hieramas_jax.models import gcn
from hieramas_jax.train import builders, learner, metrics, rollout
from hieramas_jax.train import hooks as hooks_lib
from hieramas_jax.train.environment import Environment
from hieramas_jax.train.metric_writer import MetricWriter
from hieramas_jax.train.preemption import PreemptionWatcher, StopRequested

_SHUFFLE_STREAM = 3


def build_classifier(env: Environment):
  return builders.build_classifier(env.config, env.num_roles, env.query_emb["train"].shape[-1])


def candidate_pool(env: Environment) -> np.ndarray:
  """The K candidate DAGs scored at inference, density in ``graphs.candidate_density_range`` (all distinct ones
  when fewer exist)."""
  return policy.draw_pool(policy.pool_settings(env.config), env.num_roles)


def data_pool(env: Environment) -> np.ndarray:
  """The DAGs stage-2 data generation draws from, density in ``graphs.stage2_density_range``.

  The same seed and size as ``candidate_pool``: with equal ranges the two pools are the same DAGs.
  """
  return policy.draw_pool(policy.pool_settings(env.config, env.config.graphs.stage2_density_range), env.num_roles)


def label_graphs(rewards_: np.ndarray, solved: np.ndarray, valid: np.ndarray, top_k: int) -> np.ndarray:
  """Top-k solved DAGs of each query by system reward -> 1, others 0. Shapes [Q, G].

  Graphs tied with the k-th best solved reward are positive too: the reward's
  floor (0.5 for any solved run costing over ln(2)/c_s USD) makes many solved
  runs tie, and an arbitrary cut among equals would teach the classifier noise
  (or, with a cost tie-break, cheapness at the expense of accuracy).
  """
  labels = np.zeros(rewards_.shape, np.int8)
  for q in range(rewards_.shape[0]):
    ok = np.flatnonzero(solved[q] & valid[q])
    if ok.size == 0:
      continue
    kth = np.sort(rewards_[q, ok])[::-1][min(top_k, ok.size) - 1]
    labels[q, ok[rewards_[q, ok] >= kth - 1e-9]] = 1
  return labels


@dataclasses.dataclass
class GraphData:
  adjs: np.ndarray  # [Q, G, N, N]
  rewards: np.ndarray  # [Q, G] mean system reward over the samples of each (query, graph)
  solved: np.ndarray  # [Q, G] solved in at least half of the samples
  valid: np.ndarray  # [Q, G] every sample ran without a failed call
  labels: np.ndarray  # [Q, G]
  cost: np.ndarray  # [Q, G] USD


def collect(env: Environment, sel_graphdef, sel_params, split: str, pool: np.ndarray) -> GraphData:
  """Runs the frozen selector's assignment of every query of ``split`` on G DAGs from ``pool``."""
  c = env.config.stage2
  problems = env.splits[split]
  q_count, g = len(problems), min(c.graphs_per_query, len(pool))
  # The plans inference runs (argmax under config.inference's skip cap and rotation): the DAGs are ranked for them.
  actions = rollout.inference_greedy_actions(env, sel_graphdef, sel_params, split, np.arange(q_count))
  rng = np.random.default_rng([env.config.seed, 4, {"train": 0, "val": 1, "test": 2}[split]])
  picks = np.stack([rng.choice(len(pool), size=g, replace=False) for _ in range(q_count)])
  adjs = pool[picks]  # [Q, G, N, N]
  # Each (query, graph) runs samples_per_graph times with distinct LLM draws; more samples, less label noise.
  s = int(c.samples_per_graph)
  flat_problems = [problems[q] for q in range(q_count) for _ in range(g) for _ in range(s)]
  flat_actions = np.repeat(actions, g * s, axis=0)
  flat_adjs = np.repeat(adjs.reshape(q_count * g, *adjs.shape[2:]), s, axis=0)
  samples = np.tile(np.arange(s), q_count * g)
  outcome = rollout.run_plans(env, flat_problems, rollout.make_plans(env, flat_problems, flat_actions, flat_adjs,
                                                                     sample=samples),
                              where=f"stage 2 data collection ({split} split)")
  r = env.config.reward
  shape = (q_count, g, s)
  # The labels' own c_s (paper: 500, against stage 1's 300); c_f and the counted cost are the reward's.
  reward = outcome.system_reward(r.stage2_cost_solved, r.cost_failed, r.system_cost).reshape(shape).mean(-1)
  solved = outcome.final_solved.reshape(shape).mean(-1) >= 0.5
  valid = outcome.valid.reshape(shape).all(-1)
  cost = outcome.total_cost.reshape(shape).mean(-1)
  return GraphData(adjs.astype(np.int8), reward, solved, valid, label_graphs(reward, solved, valid, c.top_k),
                   cost)


def load_graph_data(path: pathlib.Path) -> GraphData:
  """Collected (query, DAG) outcomes as stored in a workdir's stage2_data/<split>.npz."""
  with np.load(path) as f:
    return GraphData(**{k: f[k] for k in (field.name for field in dataclasses.fields(GraphData))})


def contrast_weights(data: GraphData) -> np.ndarray:
  """[Q, G] 1.0 for the valid pairs of queries with both a positive and a negative valid DAG, else 0.0.

  A query whose DAGs are all positive (every one solved and tied on the reward's
  floor) or all negative ranks nothing: training on it only shifts every score.
  """
  valid = data.valid.astype(bool)
  pos = data.labels.astype(bool) & valid
  neg = ~data.labels.astype(bool) & valid
  both = pos.any(axis=1) & neg.any(axis=1)
  return (valid & both[:, None]).astype(np.float32)


def no_positives_reason(data: GraphData, path: pathlib.Path | str) -> str:
  """Why ``data`` cannot train a classifier ('' when it can): no positive label, or no query whose labels rank."""
  n_pos = int((data.labels.astype(bool) & data.valid.astype(bool)).sum())
  if not n_pos:
    return (f"stage 2 found no positive label in {path} ({int(data.valid.sum())} of {data.valid.size} (query, DAG) "
            "pairs ran without a failed call, none solved in at least half of its runs), so no graph classifier "
            "was trained")
  if not contrast_weights(data).any():
    return (f"stage 2 found no query in {path} with both a positive and a negative DAG (every query's DAGs were "
            "all solved and tied, or all failed), so the labels rank nothing and no graph classifier was trained; "
            "raise stage2.graphs_per_query or lower stage2.top_k so that labels separate DAGs")
  return ""


def untrained_reason(workdir: pathlib.Path | str) -> str:
  """Why a workdir's stage-2 classifier must not be used, from its stored training data ('' when nothing says so)."""
  path = pathlib.Path(workdir) / "stage2_data" / "train.npz"
  if not path.exists():
    return ""
  return no_positives_reason(load_graph_data(path), path)


def _load_or_collect(env, path: pathlib.Path, sel_graphdef, sel_params, split, pool) -> GraphData:
  """The stored data of ``split``, else collected and stored (multi-host: process 0 reads and writes the file)."""
  stored = distributed.on_primary(lambda: load_graph_data(path) if path.exists() else None,
                                  f"stored stage-2 data {path.name}")
  if stored is not None:
    return stored
  data = collect(env, sel_graphdef, sel_params, split, pool)
  if distributed.is_primary():
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **dataclasses.asdict(data))
    tmp.replace(path)  # atomic: a kill never leaves half a file
  return data


def val_auc(env: Environment, graphdef, params, data: GraphData, split: str = "val") -> tuple[float, int]:
  scores = gcn.score_pool(graphdef, params, jnp.asarray(env.query_emb[split]),
                          jnp.asarray(data.adjs, jnp.float32), impl=env.config.gcn.impl)
  return metrics.mean_per_query_auc(np.asarray(scores), data.labels, data.valid)


def update_classifier(graphdef, tx, params, opt_state, batch: learner.ClassifierBatch, pos_weight: float,
                      impl: str):
  """``learner.classifier_update``: (params, opt_state, metrics), with host-local outputs.

  Multi-host: data-parallel, the batch's queries split over every device of
  every process (padded to a multiple of their count with queries of zero
  weight, which add nothing to the loss or its gradient), the parameters
  replicated; the gradient is the one-process batch's (to float rounding).
  """
  if not distributed.is_multi_process():
    return learner.classifier_update(graphdef, tx, params, opt_state, batch, pos_weight, impl=impl)
  rows, _ = distributed.pad_rows(batch._replace(role_mask=None), distributed.total_devices())
  step = learner.classifier_step(graphdef, tx, impl)

  def update(params, opt_state, role_mask, rows):
    return step(params, opt_state, rows._replace(role_mask=role_mask), pos_weight)

  return distributed.data_parallel(update, [params, opt_state, batch.role_mask], rows)


def _train_epoch(env: Environment, graphdef, tx, params, opt_state, train: GraphData, weights: np.ndarray,
                 pos_weight: float, batch: int, step_impl: str, epoch: int):
  """One epoch of full batches (one compiled shape) in the epoch's seeded order: (params, opt_state, mean loss)."""
  q_count = train.adjs.shape[0]
  order = np.random.default_rng([env.config.seed, _SHUFFLE_STREAM, epoch]).permutation(q_count)
  role_mask = jnp.ones((env.num_roles,), jnp.float32)
  query_emb = env.query_emb["train"]
  losses = []
  for i in range(0, q_count - batch + 1, batch):
    idx = order[i:i + batch]
    cb = learner.ClassifierBatch(jnp.asarray(query_emb[idx]), jnp.asarray(train.adjs[idx], jnp.float32),
                                 jnp.asarray(train.labels[idx], jnp.float32), jnp.asarray(weights[idx]), role_mask)
    params, opt_state, m = update_classifier(graphdef, tx, params, opt_state, cb, pos_weight, step_impl)
    learner.check_finite(m, epoch, "stage 2")
    losses.append(float(m["loss"]))
  return params, opt_state, float(np.mean(losses))


@dataclasses.dataclass
class Stage2Result:
  """What stage 2 returns: the policy with its classifier (without one when ``skipped``) and how training went."""

  policy: policy.HieraMASPolicy
  best_val_auc: float  # NaN when no validation query had both a positive and a negative DAG
  history: list[dict[str, float]]
  skipped: str = ""  # why no classifier was trained ('' when one was)

  @property
  def graphdef(self):
    return self.policy.classifier[0] if self.policy.classifier is not None else None

  @property
  def params(self):
    """The kept classifier parameters; None when no classifier was trained (see ``skipped``)."""
    return self.policy.classifier[1] if self.policy.classifier is not None else None


def _start(ckpt: checkpointing.Checkpointer, params, opt_state):
  """(params, opt_state, best params, best AUC, start epoch, history): fresh, or the newest checkpoint's."""
  best_params = jax.tree_util.tree_map(jnp.copy, params)  # params get donated
  if ckpt.latest_step() is None:
    return params, opt_state, best_params, -np.inf, 0, []
  restored, meta = policy.restore_train_state(ckpt, policy.classifier_train_state(params, opt_state, best_params, 0.0))
  start = int(meta["step"])
  if distributed.is_primary():
    print(f"stage 2: resumed from epoch {start} ({ckpt.directory})")
  return (restored["params"], restored["opt_state"], restored["best_params"], float(restored["best_auc"]), start,
          list(meta.get("history", [])))


def train_classifier(env: Environment, workdir: pathlib.Path, writer: MetricWriter, trained: policy.HieraMASPolicy,
                     watcher: PreemptionWatcher | None = None, *, hooks: Sequence[hooks_lib.Hook] = (),
                     progress: bool = True) -> Stage2Result:
  """Runs (or resumes) stage 2 under ``trained``'s frozen selector; returns the policy with the best classifier.

  The classifier kept is the epoch's with the best validation ROC-AUC. ``hooks``
  are called after each epoch's validation (``train.hooks``); one that returns
  True stops training there as a signal does.
  """
  config, c = env.config, env.config.stage2
  sel_graphdef, sel_params = trained.selector
  data_dir = workdir / "stage2_data"
  if distributed.is_primary():  # the one writer of stage2_data/
    data_dir.mkdir(parents=True, exist_ok=True)
  pool = data_pool(env)
  train = _load_or_collect(env, data_dir / "train.npz", sel_graphdef, sel_params, "train", pool)
  val = _load_or_collect(env, data_dir / "val.npz", sel_graphdef, sel_params, "val", pool)
  weights = contrast_weights(train)  # queries without both classes teach no ranking
  n_pos = int((train.labels * weights).sum())
  n_neg = int(((1 - train.labels) * weights).sum())
  pos_weight = n_neg / max(n_pos, 1)
  writer.write("stage2", 0, {"train_positives": n_pos, "train_negatives": n_neg, "pos_weight": pos_weight,
                             "train_queries_ranked": int(weights.any(axis=1).sum()),
                             "train_queries": int(weights.shape[0])})
  skipped = no_positives_reason(train, data_dir / "train.npz")
  if skipped:
    # Fresh parameters would score DAGs at random while claiming to be a classifier: train and save none.
    if distributed.is_primary():
      print(f"stage 2: {skipped}; inference draws a seeded random DAG per query. Delete stage2_data/ after fixing "
            "the cause (for no positive label: the stage-1 selector or the endpoints)")
    return Stage2Result(_without_classifier(trained, skipped), float("nan"), [], skipped)

  graphdef, params = build_classifier(env)
  tx = learner.make_optimizer(c.learning_rate, c.weight_decay, config.stage1.grad_clip)
  opt_state = tx.init(params)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints" / "stage2", max_to_keep=config.checkpoint.max_to_keep)
  params, opt_state, best_params, best_auc, start, history = _start(ckpt, params, opt_state)
  writer.truncate_stage("stage2", start)  # rows of epochs after the checkpoint are redone

  batch = min(c.batch_size, train.adjs.shape[0])
  # The gradient step's form: the fastest parity-tested one at these shapes (validation keeps config.gcn.impl).
  step_impl = gcn.training_impl(config.gcn.impl, batch, train.adjs.shape[1], env.num_roles)
  shown = progress and distributed.is_primary()  # one bar per run, not one per process
  bar = tqdm.trange(start, c.epochs, desc="stage 2 (graph classifier)", disable=not shown, initial=start,
                    total=c.epochs)
  try:
    for epoch in bar:
      params, opt_state, loss = _train_epoch(env, graphdef, tx, params, opt_state, train, weights, pos_weight, batch,
                                             step_impl, epoch)
      auc, counted = val_auc(env, graphdef, params, val)
      if auc > best_auc:
        best_auc, best_params = auc, jax.tree_util.tree_map(jnp.copy, params)
      done = epoch + 1
      history.append({"epoch": done, "val_auc": auc})
      row = {"loss": loss, "val_auc": auc, "val_queries_counted": counted}
      writer.write("stage2", done, row)
      bar.set_postfix(loss=f"{loss:.3f}", val_auc=f"{auc:.3f}")
      ckpt.save(done, policy.classifier_train_state(params, opt_state, best_params, best_auc),
                policy.checkpoint_metadata(policy.PolicySpec.from_environment(env), policy.STAGE2, done, config,
                                           history), force=True)
      signalled = watcher is not None and watcher.stop_requested
      if distributed.any_process(signalled, f"stop signal after stage-2 epoch {done}"):  # a signal to any stops all
        raise StopRequested(f"stopped by signal after stage-2 epoch {done}; checkpoint saved in {ckpt.directory}")
      stop = hooks_lib.call(hooks, hooks_lib.Validation("stage2", done, row, graphdef, params))
      if distributed.any_process(stop, f"stage-2 hooks after epoch {done}"):  # every process stops alike
        raise StopRequested(f"stopped by a hook after stage-2 epoch {done}; checkpoint saved in {ckpt.directory}")
  finally:
    bar.close()
    ckpt.close()
  if best_auc == -np.inf:  # no epoch, or no validation query with both classes: keep the last parameters
    best_params, best_auc = params, float("nan")
    if c.epochs and distributed.is_primary():
      print("stage 2: no validation query had both a positive and a negative DAG (ROC-AUC undefined); kept the "
            "last epoch's parameters")
  return Stage2Result(_with_classifier(trained, (graphdef, best_params)), float(best_auc), history)


def _with_classifier(trained: policy.HieraMASPolicy, classifier: tuple[Any, Any]) -> policy.HieraMASPolicy:
  return policy.HieraMASPolicy(trained.spec, trained.selector, trained.option_emb, classifier,
                               sharding=trained.sharding)


def _without_classifier(trained: policy.HieraMASPolicy, reason: str) -> policy.HieraMASPolicy:
  return policy.HieraMASPolicy(trained.spec, trained.selector, trained.option_emb, sharding=trained.sharding,
                               graph_choice_reason=reason)

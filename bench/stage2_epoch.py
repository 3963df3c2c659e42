"""Stage-2 epoch time (training steps + validation scoring) and evaluation scoring time, before and after.

Prints one JSON line. For each task's default config (MATH: 3 roles, K=100
candidates; MMLU-Redux: 8 roles, K=200) it builds the graph classifier at the
config's sizes and synthetic stage-2 data of the config's shapes (train/val
queries x G DAGs per query, MiniLM-sized query embeddings, labels of the top-k
of random rewards; no LLM is run, the timings do not depend on the labels), then
times in turns, medians over ``--repeats`` samples:

- one epoch as ``stage2.train_classifier`` runs it: full batches through
  ``learner.classifier_update`` (the loss read back after every step), then
  the validation scores and their mean per-query ROC-AUC;
  ``before``: the gradient step on the fast path (impl 'dense') and validation,
  each through a jit taking the graphdef as a static argument (hashed on every
  call: ``classifier_update`` before ``learner.classifier_step``, ``score_pool``
  before ``gcn.PoolScorer``); ``dense`` and ``dense_per_pair``: the cached
  gradient step on that form, validation through ``gcn.score_pool``; ``after``:
  the form ``gcn.training_impl`` picks for these shapes (what stage 2 now runs);
- evaluation scoring (``evaluation.choose_graphs``: every test query against the
  K candidates) through the static-graphdef jit and through ``gcn.score_pool``.

    python bench/stage2_epoch.py [--tasks math,mmlu_redux --repeats 7 --query_dim 384]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hieramas_jax import graphs  # pylint: disable=g-import-not-at-top,wrong-import-position
from hieramas_jax.models import gcn, gcn_scoring  # pylint: disable=g-import-not-at-top,wrong-import-position
from hieramas_jax.tasks import get_task  # pylint: disable=g-import-not-at-top,wrong-import-position
from hieramas_jax.train import learner, metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

# score_pool as it was before PoolScorer: the graphdef a static jit argument, hashed in Python on every call.
_STATIC_GRAPHDEF_SCORE = jax.jit(gcn_scoring._score_merged,  # pylint: disable=protected-access
                                 static_argnames=("graphdef", "impl"))


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "impl"), donate_argnames=("params", "opt_state"))
def _static_graphdef_step(graphdef, tx, params, opt_state, batch, pos_weight, impl: str):
  """learner.classifier_update as it was before learner.classifier_step: graphdef and optimizer hashed per step."""
  loss, grads = jax.value_and_grad(learner.classifier_loss)(params, graphdef, batch, pos_weight, impl)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def median_times(fns: dict, repeats: int) -> dict[str, float]:
  """Median seconds per call of each blocking callable, sampled in turns after one warm-up call each."""
  for fn in fns.values():
    fn()
  samples = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in samples.items()}


def synthetic_data(rng: np.random.Generator, pool: np.ndarray, queries: int, per_query: int, top_k: int):
  """(adjs [Q, G, N, N] float32, labels [Q, G], valid [Q, G]) of stage 2's shapes; labels: top-k random rewards."""
  picks = np.stack([rng.choice(len(pool), size=per_query, replace=len(pool) < per_query) for _ in range(queries)])
  rewards = rng.random((queries, per_query))
  labels = (rewards >= np.sort(rewards, axis=1)[:, -top_k][:, None]).astype(np.float32)
  return pool[picks].astype(np.float32), labels, np.ones((queries, per_query), np.float32)


def task_figures(task: str, query_dim: int, repeats: int, seed: int) -> dict:
  config = importlib.import_module(f"configs.{task}").get_config(None)
  c, g = config.stage2, config.gcn
  num_roles = len(get_task(config.task.name).roles)
  rng = np.random.default_rng(seed)
  data_pool = graphs.dag_pool(seed, num_roles, config.graphs.num_candidates, tuple(config.graphs.stage2_density_range),
                              allow_fewer=True)
  candidates = jnp.asarray(graphs.dag_pool(seed, num_roles, config.graphs.num_candidates,
                                           tuple(config.graphs.candidate_density_range), allow_fewer=True),
                           jnp.float32)
  train_adjs, train_labels, train_valid = synthetic_data(rng, data_pool, config.task.num_train, c.graphs_per_query,
                                                         c.top_k)
  val_adjs, val_labels, val_valid = synthetic_data(rng, data_pool, config.task.num_val, c.graphs_per_query, c.top_k)
  embed = lambda n: rng.normal(size=(n, query_dim)).astype(np.float32)
  train_q, val_q, test_q = embed(config.task.num_train), embed(config.task.num_val), jnp.asarray(
      embed(config.task.num_test))

  model = gcn.GraphClassifier(num_roles, query_dim, role_dim=g.role_dim, hidden_dim=g.hidden_dim,
                              num_layers=g.num_layers, mlp_dim=g.mlp_dim, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  init_params = nnx.to_pure_dict(state)
  tx = learner.make_optimizer(c.learning_rate, c.weight_decay, config.stage1.grad_clip)
  batch = min(c.batch_size, config.task.num_train)
  role_mask = jnp.ones((num_roles,), jnp.float32)
  pos_weight = float((1 - train_labels).sum() / train_labels.sum())
  chosen = gcn.training_impl(g.impl, batch, c.graphs_per_query, num_roles)
  val_q_device, val_adjs_device = jnp.asarray(val_q), jnp.asarray(val_adjs)

  def epoch_fn(train_impl: str, legacy: bool):
    """One epoch as stage 2 runs it; its parameters and optimizer state carry over from call to call."""
    state_ = {"params": jax.tree.map(jnp.copy, init_params)}
    state_["opt_state"] = tx.init(state_["params"])
    counter = [0]

    def run():
      order = np.random.default_rng([seed, counter[0]]).permutation(len(train_q))
      counter[0] += 1
      losses = []
      for i in range(0, len(order) - batch + 1, batch):
        idx = order[i:i + batch]
        cb = learner.ClassifierBatch(jnp.asarray(train_q[idx]), jnp.asarray(train_adjs[idx]),
                                     jnp.asarray(train_labels[idx]), jnp.asarray(train_valid[idx]), role_mask)
        update = _static_graphdef_step if legacy else learner.classifier_update
        state_["params"], state_["opt_state"], m = update(
            graphdef, tx, state_["params"], state_["opt_state"], cb, pos_weight, impl=train_impl)
        losses.append(float(m["loss"]))
      if legacy:
        scores = _STATIC_GRAPHDEF_SCORE(graphdef, state_["params"], val_q_device, val_adjs_device, None, impl=g.impl)
      else:
        scores = gcn.score_pool(graphdef, state_["params"], val_q_device, val_adjs_device, impl=g.impl)
      metrics.mean_per_query_auc(np.asarray(scores), val_labels, val_valid)
      return losses

    return run

  epochs = {"before": epoch_fn("dense", True), "dense": epoch_fn("dense", False),
            "dense_per_pair": epoch_fn("dense_per_pair", False)}
  scorers = {
      "eval_before": lambda: np.asarray(_STATIC_GRAPHDEF_SCORE(graphdef, init_params, test_q, candidates, None,
                                                               impl=g.impl)),
      "eval_after": lambda: np.asarray(gcn.score_pool(graphdef, init_params, test_q, candidates, impl=g.impl)),
  }
  times = median_times({**epochs, **scorers}, repeats)
  # Gradient parity of the two training forms at these shapes (the tests check it at small ones).
  cb = learner.ClassifierBatch(jnp.asarray(train_q[:batch]), jnp.asarray(train_adjs[:batch]),
                               jnp.asarray(train_labels[:batch]), jnp.asarray(train_valid[:batch]), role_mask)
  grads = {impl: jax.jit(jax.value_and_grad(learner.classifier_loss), static_argnums=(1, 4))(
      init_params, graphdef, cb, pos_weight, impl) for impl in ("dense", "dense_per_pair")}
  grad_diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grads["dense"]),
                                                               jax.tree.leaves(grads["dense_per_pair"])))
  ms = lambda key: round(1e3 * times[key], 2)
  return {
      "roles": num_roles, "train_queries": config.task.num_train, "val_queries": config.task.num_val,
      "graphs_per_query": c.graphs_per_query, "batch": batch, "steps_per_epoch": len(train_q) // batch,
      "test_queries": config.task.num_test, "candidates": int(candidates.shape[0]),
      "training_impl_chosen": chosen,
      "epoch_ms_before": ms("before"), "epoch_ms_after": ms(chosen),
      "epoch_ms_train_dense": ms("dense"), "epoch_ms_train_dense_per_pair": ms("dense_per_pair"),
      "epoch_after_over_before": round(times[chosen] / times["before"], 3),
      "eval_scoring_ms_before": ms("eval_before"), "eval_scoring_ms_after": ms("eval_after"),
      "max_abs_diff_loss_and_grads_dense_vs_per_pair": grad_diff,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", default="math,mmlu_redux")
  parser.add_argument("--query_dim", type=int, default=384, help="MiniLM's embedding size (the default encoder)")
  parser.add_argument("--repeats", type=int, default=7, help="timed epochs per variant (medians are reported)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  load_before = os.getloadavg()[0]
  result = {"bench": "stage2_epoch", "device": jax.devices()[0].platform, "cpu_cores": os.cpu_count(),
            "query_dim": args.query_dim, "repeats": args.repeats}
  for task in [t for t in args.tasks.split(",") if t]:
    result[task] = task_figures(task, args.query_dim, args.repeats, args.seed)
  result["load_average_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  print(json.dumps(result))


if __name__ == "__main__":
  main()

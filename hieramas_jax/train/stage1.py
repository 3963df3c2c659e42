"""Stage 1: train the LLM selector with REINFORCE and a multi-level, cost-aware reward.

Per step: a batch of training queries and one random DAG each from the pool
(both drawn from step-derived RNG), assignments sampled from the selector at the
cosine-annealed temperature, execution, grading of every role output and of the
final answer, multi-level credit, and one jitted AdamW update (learning rate
constant or cosine-decayed, as a step-derived factor outside the optimizer
state). The model choices of a role take its credit; its run/skip decision takes
the credit that ``stage1.run_skip_credit`` names (``learner.reinforce_loss``).
Validation with argmax selection on fixed (query, DAG) pairs every
``eval_every`` steps keeps the latest parameters that are not clearly worse than
the best seen (``keeps_latest``). Checkpoints every ``checkpoint.every_steps``
and on SIGTERM. Queries with a failed LLM call are masked out of the loss, the
baselines and every average; a step (or validation) with too many of them raises
``executor.FailedCallsError`` before its update, so no checkpoint holds it.

Multi-host: every process draws the same episodes (the draws are step-derived),
runs its share of them (``rollout.run_plans``) and gets the whole graded batch;
the update is data-parallel over every device of every process
(``distributed.data_parallel``), so 1 and N processes train alike (to float
rounding). A stop signal on any process stops every process after the same step.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hieramas_jax import checkpointing, distributed, graphs, policy, rewards
from hieramas_jax.models import selector as sel
from hieramas_jax.train import builders, learner, rollout
from hieramas_jax.train import hooks as hooks_lib
from hieramas_jax.train.environment import Environment
from hieramas_jax.train.metric_writer import MetricWriter
from hieramas_jax.train.preemption import PreemptionWatcher, StopRequested

_sample = jax.jit(sel.sample)  # one compiled sampler; temperature is a traced argument
_SAMPLE_STREAM = 1  # fold-in stream ids keep the random draws of different purposes apart
_BATCH_STREAM = 2


def build_selector(env: Environment):
  return builders.build_selector(env.config, env.query_role_emb["train"].shape[-1], env.option_emb.shape[-1])


def train_pool(env: Environment) -> np.ndarray:
  """The DAG pool stage 1 samples from (seeded by the config)."""
  return graphs.dag_pool(env.config.seed + 1, env.num_roles, env.config.graphs.train_pool_size,
                         tuple(env.config.graphs.density_range), allow_fewer=True)


@dataclasses.dataclass
class Stage1Result:
  """What stage 1 returns: the trained policy (selector only) and how training went."""

  policy: policy.HieraMASPolicy  # the kept selector (best by validation, see keeps_latest); no classifier yet
  final_params: Any
  best_val_reward: float
  history: list[dict[str, float]]

  @property
  def graphdef(self):
    return self.policy.selector[0]

  @property
  def params(self):
    return self.policy.selector[1]


def selector_policy(env: Environment, graphdef, params) -> policy.HieraMASPolicy:
  """A policy of this environment's spec holding the selector ``(graphdef, params)`` and no classifier."""
  return policy.HieraMASPolicy(policy.PolicySpec.from_environment(env), (graphdef, params), env.option_emb)


def validate(env: Environment, graphdef, params, pool: np.ndarray, where: str = "") -> dict[str, float]:
  """Argmax selection on the validation queries, each on a fixed random DAG, ``val_samples`` runs each.

  Averages count the runs without a failed call only (``val_failed``: the share of the others).
  """
  n_samples = int(env.config.stage1.val_samples)
  problems = env.splits["val"]
  index = np.arange(len(problems))
  actions = np.repeat(rollout.greedy_actions(env, graphdef, params, "val", index), n_samples, axis=0)
  adjs = np.repeat(rollout.fixed_random_dags(pool, len(problems), env.config.seed + 7), n_samples, axis=0)
  problems = [p for p in problems for _ in range(n_samples)]
  samples = np.tile(np.arange(n_samples), len(index))
  outcome = rollout.run_plans(env, problems, rollout.make_plans(env, problems, actions, adjs, sample=samples),
                              where=f"stage 1 validation{where}")
  r = env.config.reward
  reward = outcome.system_reward(r.cost_solved, r.cost_failed, r.system_cost)
  v = outcome.valid
  # Standard error over queries (a query's runs are averaged first: they are not independent draws of the mean).
  # Runs are laid out query by query, n_samples each.
  per_query = np.where(v, reward, np.nan).reshape(len(index), n_samples)
  counted = v.reshape(len(index), n_samples).any(axis=1)
  means = np.nanmean(per_query[counted], axis=1)
  se = float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")
  return {"val_reward": float(reward[v].mean()) if v.any() else float("nan"), "val_reward_se": se,
          "val_accuracy": float(outcome.final_solved[v].mean()) if v.any() else float("nan"),
          "val_cost": float(outcome.total_cost[v].mean()) if v.any() else float("nan"),
          "val_failed": float((~v).mean())}


def keeps_latest(history: list[dict[str, float]], reward: float, se: float, margin: float) -> bool:
  """Whether a validation result replaces the kept parameters.

  Parameters from later in training are kept unless their validation reward is
  below the highest one seen by more than ``margin`` standard errors of the
  difference: with the few validation queries and noisy rewards here, the
  plain maximum of many estimates mostly picks noise (measured: it kept
  parameters worse than the final ones on 4 of 10 simulator seeds), while
  training with a decaying learning rate improves on average.
  """
  if not np.isfinite(reward):
    return False
  seen = [h for h in history if np.isfinite(h.get("val_reward", np.nan))]
  if not seen:
    return True
  top = max(seen, key=lambda h: h["val_reward"])
  spread = np.sqrt(np.nan_to_num(se) ** 2 + np.nan_to_num(top.get("val_reward_se", 0.0)) ** 2)
  return bool(reward >= top["val_reward"] - margin * spread)


@dataclasses.dataclass
class _Training:
  """What stage 1 carries from step to step and checkpoints."""

  params: Any
  opt_state: Any
  baseline: np.ndarray  # the 'ema' baseline per role
  best_params: Any
  best_val: float
  history: list[dict[str, float]]
  start: int = 0

  def saved(self, option_emb) -> dict[str, Any]:
    return policy.selector_train_state(self.params, self.opt_state, self.baseline, self.best_params, self.best_val,
                                       option_emb)


def _start(env: Environment, ckpt: checkpointing.Checkpointer, params, tx) -> _Training:
  """Fresh training state, or the newest checkpoint's."""
  state = _Training(params, tx.init(params), np.zeros(env.num_roles, np.float32),
                    jax.tree_util.tree_map(jnp.copy, params), -np.inf, [])  # params get donated
  if ckpt.latest_step() is None:
    return state
  restored, meta = policy.restore_train_state(ckpt, state.saved(env.option_emb))
  if distributed.is_primary():
    print(f"stage 1: resumed from step {int(meta['step'])} ({ckpt.directory})")
  return _Training(restored["params"], restored["opt_state"], np.asarray(restored["baseline"]),
                   restored["best_params"], float(restored["best_val"]), list(meta.get("history", [])),
                   int(meta["step"]))


def _episodes(env: Environment, pool: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """(query index, DAG, LLM sample index) per episode of ``step``, and the group size.

  With the group baseline, batch_size // group_size queries are each sampled group_size times on one DAG.
  """
  c = env.config.stage1
  rng = np.random.default_rng([env.config.seed, _BATCH_STREAM, step])
  group = c.group_size if c.baseline == "group" else 1
  queries = rng.choice(len(env.splits["train"]), size=c.batch_size // group, replace=False)
  adjs = np.repeat(pool[rng.integers(0, len(pool), len(queries))], group, axis=0)
  samples = (step + 1) * group + np.tile(np.arange(group), len(queries))  # distinct LLM draws per episode
  return np.repeat(queries, group), adjs, samples, group


# Reward baselines by stage1.baseline: (credit [B, R], weights [B, R], group size, ema baseline [R]) -> [B, R].
_BASELINES = {
    "none": lambda credit, weights, group, ema: np.zeros_like(credit),
    "ema": lambda credit, weights, group, ema: np.broadcast_to(ema, credit.shape),
    "batch_mean": lambda credit, weights, group, ema: np.asarray(rewards.batch_mean_baseline(credit, weights)),
    "group": lambda credit, weights, group, ema: np.asarray(rewards.group_baseline(credit, weights, group)),
}


def _advantages(env: Environment, outcome: rollout.Outcome, credit: np.ndarray, weights: np.ndarray, group: int,
                state: _Training, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(model-choice advantages, run/skip advantages, system reward) of a graded batch."""
  c, r = env.config.stage1, env.config.reward
  base = _BASELINES[c.baseline](credit, weights, group, state.baseline)
  adv = np.asarray(rewards.advantages(credit, weights.astype(np.float32), base))
  sys_reward = outcome.system_reward(r.cost_solved, r.cost_failed, r.system_cost)
  if c.run_skip_credit == "role" or step < c.run_skip_warmup * c.steps:
    return adv, adv, sys_reward
  decision = np.broadcast_to(sys_reward[:, None], credit.shape)
  if c.run_skip_credit == "role_vs_system":
    decision = np.where(outcome.role_ran, credit, decision)
  role_adv = np.asarray(rewards.run_skip_advantages(decision, outcome.valid, "none" if c.baseline == "none" else "loo",
                                                    group))
  return adv, role_adv, sys_reward


def update_selector(graphdef, tx, params, opt_state, batch: learner.SelectorBatch, temperature: float,
                    entropy_coef: float, lr_scale: float):
  """``learner.selector_update``: (params, opt_state, metrics), with host-local outputs.

  Multi-host: data-parallel, the batch's rows split over every device of every
  process (padded to a multiple of their count with rows of zero weight and
  zero advantage, which add nothing to the loss or its gradient), the parameters
  replicated; the gradient is the one-process batch's (to float rounding).
  """
  if not distributed.is_multi_process():
    return learner.selector_update(graphdef, tx, params, opt_state, batch, temperature, entropy_coef, lr_scale)
  rows, _ = distributed.pad_rows(batch._replace(option_emb=None), distributed.total_devices())

  def update(params, opt_state, option_emb, rows):
    return learner.selector_update(graphdef, tx, params, opt_state, rows._replace(option_emb=option_emb),
                                   temperature, entropy_coef, lr_scale)

  return distributed.data_parallel(update, [params, opt_state, batch.option_emb], rows)


def _train_step(env: Environment, graphdef, tx, state: _Training, pool: np.ndarray, step: int, option_emb,
                valid) -> dict[str, float]:
  """Samples, runs and grades one batch and updates ``state`` in place; returns the step's metrics row.

  ``option_emb`` (on device) and the selection mask ``valid`` are the same every step: the caller makes them once.
  """
  c, config = env.config.stage1, env.config
  index, adjs, samples, group = _episodes(env, pool, step)
  temperature = float(rewards.cosine_temperature(step, c.steps, c.temperature_start, c.temperature_end))
  qr = jnp.asarray(env.query_role_emb["train"][index])
  logits = sel.selector_logits(graphdef, state.params, qr, option_emb)
  actions = _sample(rollout.sample_key(config.seed, _SAMPLE_STREAM, step), logits, valid, temperature)
  problems = [env.splits["train"][i] for i in index]
  # Raises before the update when too many queries failed: nothing of this step is learned or saved.
  outcome = rollout.run_plans(env, problems, rollout.make_plans(env, problems, np.asarray(actions), adjs,
                                                                sample=samples), where=f"stage 1 step {step + 1}")
  credit = rollout.credit(env, outcome, c.alpha)
  weights = outcome.valid[:, None] & outcome.role_ran
  adv, role_adv, sys_reward = _advantages(env, outcome, credit, weights, group, state, step)
  batch = learner.SelectorBatch(qr, option_emb, valid, actions, jnp.asarray(adv, jnp.float32),
                                jnp.asarray(role_adv, jnp.float32), jnp.asarray(outcome.valid, jnp.float32))
  lr_scale = float(rewards.cosine_schedule(step, c.steps, 1.0, 0.0)) if c.lr_schedule == "cosine" else 1.0
  state.params, state.opt_state, metrics = update_selector(graphdef, tx, state.params, state.opt_state, batch,
                                                          temperature, c.entropy_coef, lr_scale)
  learner.check_finite(metrics, step, "stage 1")
  if c.baseline == "ema":
    state.baseline = np.asarray(rewards.ema_update(jnp.asarray(state.baseline), credit, weights, c.ema_decay))
  ok = outcome.valid  # run_plans raised when none is: the means below are over at least one query
  return {**{k: float(v) for k, v in metrics.items()}, "temperature": temperature,
          "reward": float(sys_reward[ok].mean()), "accuracy": float(outcome.final_solved[ok].mean()),
          "cost": float(outcome.total_cost[ok].mean()), "failed": float((~ok).mean())}


def _validate_and_keep(env: Environment, graphdef, state: _Training, pool: np.ndarray, done: int,
                       row: dict[str, float]) -> None:
  """Adds the validation's figures to ``row`` and keeps the parameters when ``keeps_latest`` says so."""
  row.update(validate(env, graphdef, state.params, pool, where=f" after step {done}"))
  kept = keeps_latest(state.history, row["val_reward"], row["val_reward_se"], env.config.stage1.keep_margin)
  if kept:
    state.best_val, state.best_params = row["val_reward"], jax.tree_util.tree_map(jnp.copy, state.params)
  state.history.append({"step": done, "val_reward": row["val_reward"], "val_reward_se": row["val_reward_se"],
                        "val_accuracy": row["val_accuracy"], "kept": kept})


def train_selector(env: Environment, workdir: pathlib.Path, writer: MetricWriter,
                   watcher: PreemptionWatcher | None = None, *, hooks: Sequence[hooks_lib.Hook] = (),
                   progress: bool = True) -> Stage1Result:
  """Runs (or resumes) stage 1 and returns the trained policy (its selector) with the run's history.

  ``hooks`` are called after each validation (``train.hooks``); one that returns
  True stops training there as a signal does: checkpoint, then StopRequested.
  """
  c, config = env.config.stage1, env.config
  graphdef, params = build_selector(env)
  tx = learner.make_optimizer(c.learning_rate, c.weight_decay, c.grad_clip)
  pool = train_pool(env)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints" / "stage1", max_to_keep=config.checkpoint.max_to_keep)
  state = _start(env, ckpt, params, tx)
  writer.truncate_stage("stage1", state.start)  # rows of steps after the checkpoint are redone
  spec = policy.PolicySpec.from_environment(env)
  option_emb, valid = jnp.asarray(env.option_emb), rollout.selection_mask(env, c.batch_size).valid

  def save(step: int) -> None:
    if step not in ckpt.all_steps():  # else the periodic save of this step already happened
      ckpt.save(step, state.saved(env.option_emb),
                policy.checkpoint_metadata(spec, policy.STAGE1, step, config, state.history), force=True)

  shown = progress and distributed.is_primary()  # one bar per run, not one per process
  bar = tqdm.trange(state.start, c.steps, desc="stage 1 (selector)", disable=not shown, initial=state.start,
                    total=c.steps)
  try:
    for step in bar:
      row = _train_step(env, graphdef, tx, state, pool, step, option_emb, valid)
      done, stop = step + 1, False
      if done % c.eval_every == 0 or done == c.steps:
        _validate_and_keep(env, graphdef, state, pool, done, row)
        stop = hooks_lib.call(hooks, hooks_lib.Validation("stage1", done, row, graphdef, state.params))
        stop = distributed.any_process(stop, f"stage-1 hooks after step {done}")  # every process stops alike
      writer.write("stage1", done, row)
      bar.set_postfix(reward=f"{row['reward']:.3f}", T=f"{row['temperature']:.2f}")
      if done % config.checkpoint.every_steps == 0 or done == c.steps or stop:
        save(done)
      signalled = watcher is not None and watcher.stop_requested
      if distributed.any_process(signalled, f"stop signal after stage-1 step {done}"):  # a signal to any stops all
        save(done)
        raise StopRequested(f"stopped by signal after stage-1 step {done}; checkpoint saved in {ckpt.directory}")
      if stop:
        raise StopRequested(f"stopped by a hook after stage-1 step {done}; checkpoint saved in {ckpt.directory}")
  finally:
    bar.close()
    ckpt.close()
  best_params = state.params if state.best_val == -np.inf else state.best_params  # -inf: no validation ran
  return Stage1Result(selector_policy(env, graphdef, best_params), state.params, float(state.best_val),
                      state.history)


def load_selector(env: Environment, workdir: pathlib.Path):
  """The best stage-1 selector of a workdir, for this environment's models and roles."""
  graphdef, params, _ = builders.load_selector(
      workdir, env.config, env.query_role_emb["train"].shape[-1], env.option_emb.shape[-1],
      model_names=env.model_names, roles=[r.name for r in env.roles])
  return graphdef, params


def load_policy(env: Environment, workdir: pathlib.Path) -> policy.HieraMASPolicy:
  """The best stage-1 selector of a workdir as a policy (no classifier), for this environment."""
  return selector_policy(env, *load_selector(env, workdir))

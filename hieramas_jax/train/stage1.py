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
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hieramas_jax import checkpointing, graphs, policy, rewards
from hieramas_jax.models import selector as sel
from hieramas_jax.train import builders, learner, rollout
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
  graphdef: Any
  params: Any  # best parameters by validation reward
  final_params: Any
  best_val_reward: float
  history: list[dict[str, float]]


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
  c = env.config.stage1
  reward = outcome.system_reward(c.reward_cost_solved, c.reward_cost_failed, c.system_cost)
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


def train_selector(env: Environment, workdir: pathlib.Path, writer: MetricWriter,
                   watcher: PreemptionWatcher | None = None, *, progress: bool = True) -> Stage1Result:
  """Runs (or resumes) stage 1 and returns the best selector."""
  c = env.config.stage1
  config = env.config
  graphdef, params = build_selector(env)
  tx = learner.make_optimizer(c.learning_rate, c.weight_decay, c.grad_clip)
  opt_state = tx.init(params)
  baseline = np.zeros(env.num_roles, np.float32)
  best_params, best_val = jax.tree_util.tree_map(jnp.copy, params), -np.inf  # params get donated
  pool = train_pool(env)
  start = 0
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints" / "stage1", max_to_keep=config.checkpoint.max_to_keep)
  history: list[dict[str, float]] = []
  spec = policy.PolicySpec.from_environment(env)
  if ckpt.latest_step() is not None:
    template = policy.selector_train_state(params, opt_state, baseline, best_params, best_val, env.option_emb)
    restored, meta = policy.restore_train_state(ckpt, template)
    params, opt_state = restored["params"], restored["opt_state"]
    baseline = np.asarray(restored["baseline"])
    best_params, best_val = restored["best_params"], float(restored["best_val"])
    start = int(meta["step"])
    history = list(meta.get("history", []))
    print(f"stage 1: resumed from step {start} ({ckpt.directory})")
  writer.truncate_stage("stage1", start)  # rows of steps after the checkpoint are redone

  def save(step: int) -> None:
    if step in ckpt.all_steps():  # periodic save of this step already happened
      return
    ckpt.save(step, policy.selector_train_state(params, opt_state, baseline, best_params, best_val, env.option_emb),
              policy.checkpoint_metadata(spec, policy.STAGE1, step, config, history), force=True)

  train_problems = env.splits["train"]
  option_emb = jnp.asarray(env.option_emb)
  valid = rollout.selection_mask(env, c.batch_size).valid
  bar = tqdm.trange(start, c.steps, desc="stage 1 (selector)", disable=not progress, initial=start, total=c.steps)
  step = start
  try:
    for step in bar:
      rng = np.random.default_rng([config.seed, _BATCH_STREAM, step])
      # With the group baseline, batch_size // group_size queries are each sampled group_size times on one DAG.
      group = c.group_size if c.baseline == "group" else 1
      queries = rng.choice(len(train_problems), size=c.batch_size // group, replace=False)
      index = np.repeat(queries, group)
      adjs = np.repeat(pool[rng.integers(0, len(pool), len(queries))], group, axis=0)
      samples = (step + 1) * group + np.tile(np.arange(group), len(queries))  # distinct LLM draws per episode
      temperature = float(rewards.cosine_temperature(step, c.steps, c.temperature_start, c.temperature_end))
      qr = jnp.asarray(env.query_role_emb["train"][index])
      logits = sel.selector_logits(graphdef, params, qr, option_emb)
      actions = _sample(rollout.sample_key(config.seed, _SAMPLE_STREAM, step), logits, valid, temperature)
      problems = [train_problems[i] for i in index]
      # Raises before the update when too many queries failed: nothing of this step is learned or saved.
      outcome = rollout.run_plans(env, problems, rollout.make_plans(env, problems, np.asarray(actions), adjs,
                                                                    sample=samples), where=f"stage 1 step {step + 1}")
      credit = rollout.credit(env, outcome, c.alpha)
      weights = outcome.valid[:, None] & outcome.role_ran
      if c.baseline == "ema":
        base = np.broadcast_to(baseline, credit.shape)
      elif c.baseline == "batch_mean":
        base = np.asarray(rewards.batch_mean_baseline(credit, weights))
      elif c.baseline == "group":
        base = np.asarray(rewards.group_baseline(credit, weights, group))
      else:
        base = np.zeros_like(credit)
      adv = np.asarray(rewards.advantages(credit, weights.astype(np.float32), base))
      sys_reward = outcome.system_reward(c.reward_cost_solved, c.reward_cost_failed, c.system_cost)
      if c.run_skip_credit != "role" and step >= c.run_skip_warmup * c.steps:
        decision = np.broadcast_to(sys_reward[:, None], credit.shape)
        if c.run_skip_credit == "role_vs_system":
          decision = np.where(outcome.role_ran, credit, decision)
        role_adv = np.asarray(rewards.run_skip_advantages(decision, outcome.valid,
                                                          "none" if c.baseline == "none" else "loo", group))
      else:
        role_adv = adv
      batch = learner.SelectorBatch(qr, option_emb, valid, actions, jnp.asarray(adv, jnp.float32),
                                    jnp.asarray(role_adv, jnp.float32), jnp.asarray(outcome.valid, jnp.float32))
      lr_scale = float(rewards.cosine_schedule(step, c.steps, 1.0, 0.0)) if c.lr_schedule == "cosine" else 1.0
      params, opt_state, metrics = learner.selector_update(graphdef, tx, params, opt_state, batch,
                                                           temperature, c.entropy_coef, lr_scale)
      learner.check_finite(metrics, step, "stage 1")
      if c.baseline == "ema":
        baseline = np.asarray(rewards.ema_update(jnp.asarray(baseline), credit, weights, c.ema_decay))
      row = {k: float(v) for k, v in metrics.items()}
      ok = outcome.valid  # run_plans raised when none is: the means below are over at least one query
      row.update(temperature=temperature, reward=float(sys_reward[ok].mean()),
                 accuracy=float(outcome.final_solved[ok].mean()), cost=float(outcome.total_cost[ok].mean()),
                 failed=float((~ok).mean()))
      done = step + 1
      if done % c.eval_every == 0 or done == c.steps:
        row.update(validate(env, graphdef, params, pool, where=f" after step {done}"))
        kept = keeps_latest(history, row["val_reward"], row["val_reward_se"], c.keep_margin)
        if kept:
          best_val, best_params = row["val_reward"], jax.tree_util.tree_map(jnp.copy, params)
        history.append({"step": done, "val_reward": row["val_reward"], "val_reward_se": row["val_reward_se"],
                        "val_accuracy": row["val_accuracy"], "kept": kept})
      writer.write("stage1", done, row)
      bar.set_postfix(reward=f"{row['reward']:.3f}", T=f"{temperature:.2f}")
      if done % config.checkpoint.every_steps == 0 or done == c.steps:
        save(done)
      if watcher is not None and watcher.stop_requested:
        save(done)
        raise StopRequested(f"stopped by signal after stage-1 step {done}; checkpoint saved in {ckpt.directory}")
  finally:
    bar.close()
    ckpt.close()
  if best_val == -np.inf:  # no validation ran (steps == 0)
    best_params = params
  return Stage1Result(graphdef, best_params, params, float(best_val), history)


def load_selector(env: Environment, workdir: pathlib.Path):
  """The best stage-1 selector of a workdir, for this environment's models and roles."""
  graphdef, params, _ = builders.load_selector(
      workdir, env.config, env.query_role_emb["train"].shape[-1], env.option_emb.shape[-1],
      model_names=env.model_names, roles=[r.name for r in env.roles])
  return graphdef, params

"""MLPO leader training: a leader LLM (``hieramas_jax.lm`` decoder) learns with GRPO to synthesize K peers' answers.

One step (``config.mlpo``; the paper is arXiv 2507.08960):

  1. ``queries_per_step`` training problems, chosen from (seed, step).
  2. For each of T rounds: the K peers answer (round 0: the plain prompt; later rounds: refine on the leader's
     last answer), through any ``Backend`` (sim, openai, local); the leader samples a group of G completions of
     the synthesis prompt; the task's grader gives each a reward. The prompts are those of the MLPO baseline
     (``baselines.prompts``), so the leader trains on what ``launch.evaluate`` shows it. The peers of the next
     round read the group's first sample (a random draw of the leader's policy).
  3. One GRPO update (``lm.grpo``) over the B*T groups: advantages normalised within each group, clipped ratio,
     k3 KL to the frozen starting weights, AdamW with gradient clipping (optax).

Randomness derives from (seed, step): problems from a numpy generator seeded with them, each leader sample's
key from (seed, stream, step, query, round, sample) (``leader_row_keys``), the peers' draws from sample indices of
(step, round, peer); a resumed run repeats exactly what an uninterrupted one does, and no draw depends on which
queries were batched together.

Several processes (``distributed``, one per host): each runs its contiguous share of a step's queries (peer
calls through its own backend, the leader's sampling on its own devices, grading); the graded rollouts are
gathered, and the GRPO update runs data-parallel over every device of every process, so a run on N processes
draws the same samples and ends with the same leader (to float rounding) as one process. Process 0 alone writes
metrics, progress lines and the exported leader; checkpoints are written collectively; a stop signal (SIGTERM)
on any process stops all of them after the same step. A query with a failed peer call is masked out of the update;
more than ``llm.max_failed_fraction`` of them stops the run (``executor.FailedCallsError``). Checkpoints go
through ``checkpointing.Checkpointer`` (params + optimizer state); SIGTERM saves after the current step. The
trained leader is written to ``<workdir>/leader`` (``lm.leader_export``): a pool entry ``backend='local',
path=<workdir>/leader`` serves it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from hieramas_jax import checkpointing
from hieramas_jax import distributed
from hieramas_jax import executor
from hieramas_jax.baselines import prompts
from hieramas_jax.baselines.core import ROUND_STRIDE, cycled
from hieramas_jax.llm import base as llm_base
from hieramas_jax.llm import pool as llm_pool
from hieramas_jax.llm import preflight as llm_preflight
from hieramas_jax.llm import routing as llm_routing
from hieramas_jax.lm import leader_export
from hieramas_jax.tasks.base import Problem, Task
from hieramas_jax.train import environment
from hieramas_jax.train.metric_writer import MetricWriter
from hieramas_jax.train.preemption import PreemptionWatcher, StopRequested
from hieramas_jax.train.leader_grpo import (  # noqa: F401  (the loop's parts, importable from here too)
    Batch, GRPOLearner, GRPOSettings, LeaderModel, NonFiniteLossError, Samples, build_batch, chat_ids, length_bucket,
    load_leader_model, make_optimizer, sample_groups, sequence_logprobs, tiny_leader)

ConfigError = environment.ConfigError
STAGE = "leader"  # metrics.jsonl rows
_BATCH_STREAM = 31  # numpy stream of the problem choice (apart from the sampling key)
_SAMPLE_STREAM = 32  # the leader's sampling keys: fold_in(key(seed), _SAMPLE_STREAM), then step, query, round, sample
_MAX_ROUNDS = 100  # rounds per step the peers' sample indices leave room for
# Config fields a resumed run must share with its checkpoints (anything else may change, e.g. steps).
_RESUME_FIELDS = ("leader", "leader_dtype", "peers", "peer_models", "rounds", "group_size", "queries_per_step",
                  "max_new_tokens", "temperature", "top_p", "clip_eps", "kl_coef", "loss_level", "updates_per_batch",
                  "adv_eps", "learning_rate", "weight_decay", "grad_clip", "format_reward", "peer_answer_chars")


# ---------------------------------------------------------------------------
# MLPO rollouts: peers through the Backend interface, the leader in JAX
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Rollout:
  """One step's groups (B queries x T rounds, round-major within a query) and what they earned."""

  prompt_ids: list[list[int]]  # [B*T]
  samples: Samples  # [B*T*G]
  rewards: np.ndarray  # [B*T, G]
  correct: np.ndarray  # [B*T, G] bool
  valid: np.ndarray  # [B*T] bool: every peer call of the query so far answered
  final_correct: np.ndarray  # [B] bool: the leader's last-round answer (the group's first sample) right
  peer_correct: np.ndarray  # [B] fraction of the first round's peer answers that are right

  def queries(self, rounds: int, group_size: int) -> list[Rollout]:
    """One Rollout per query, in order (what a process hands to the others)."""
    t, g = rounds, group_size
    return [Rollout(prompt_ids=self.prompt_ids[q * t:(q + 1) * t],
                    samples=Samples(self.samples.tokens[q * t * g:(q + 1) * t * g],
                                    self.samples.texts[q * t * g:(q + 1) * t * g],
                                    self.samples.finish_reasons[q * t * g:(q + 1) * t * g]),
                    rewards=self.rewards[q * t:(q + 1) * t], correct=self.correct[q * t:(q + 1) * t],
                    valid=self.valid[q * t:(q + 1) * t], final_correct=self.final_correct[q:q + 1],
                    peer_correct=self.peer_correct[q:q + 1])
            for q in range(len(self.final_correct))]

  @classmethod
  def join(cls, parts: Sequence[Rollout]) -> Rollout:
    """The Rollout of consecutive queries' Rollouts (the inverse of ``queries``)."""
    return cls(prompt_ids=[p for r in parts for p in r.prompt_ids],
               samples=Samples([t for r in parts for t in r.samples.tokens],
                               [t for r in parts for t in r.samples.texts],
                               [t for r in parts for t in r.samples.finish_reasons]),
               rewards=np.concatenate([r.rewards for r in parts]), correct=np.concatenate([r.correct for r in parts]),
               valid=np.concatenate([r.valid for r in parts]),
               final_correct=np.concatenate([r.final_correct for r in parts]),
               peer_correct=np.concatenate([r.peer_correct for r in parts]))


def step_key(seed: int, step: int) -> jax.Array:
  """The key every leader sample of ``step`` derives from (``leader_row_keys``)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SAMPLE_STREAM), step)


def leader_row_keys(key: jax.Array, query_indices: Sequence[int], round_index: int, group_size: int) -> jax.Array:
  """One key per leader sample [len(query_indices) * group_size]: (query, round, sample) folded into ``key``.

  ``query_indices`` are the queries' places in the step's batch, so a sample's draw is the same whichever
  process (or batch) generates it.
  """
  queries = np.repeat(np.asarray(query_indices, np.uint32), group_size)
  samples = np.tile(np.arange(group_size, dtype=np.uint32), len(query_indices))
  fold = jax.random.fold_in
  return jax.vmap(lambda q, j: fold(fold(fold(key, q), round_index), j))(queries, samples)


def peer_sample_index(step: int, round_index: int, peer: int) -> int:
  """The peers' draw of (step, round, peer): resumed runs ask the same, distinct steps ask anew."""
  return (step * _MAX_ROUNDS + round_index) * ROUND_STRIDE + peer


async def _peer_round(backend: llm_base.Backend, task: Task, problems: Sequence[Problem], models: Sequence[str],
                      own: list[list[str | None]], leader: Sequence[str | None], round_index: int, step: int,
                      params: dict[str, Any]) -> list[list[llm_base.Response]]:
  calls = []
  for q, problem in enumerate(problems):
    for k, model in enumerate(models):
      messages = (prompts.plain_messages(task, problem) if round_index == 0 else
                  prompts.refine_messages(task, problem, own[q][k], leader[q]))
      calls.append(backend.complete(model, messages, sample_index=peer_sample_index(step, round_index, k),
                                    **params))
  responses = await asyncio.gather(*calls)
  return [list(responses[q * len(models):(q + 1) * len(models)]) for q in range(len(problems))]


def mlpo_rollout(model: LeaderModel, params: dict[str, Any], backend: llm_base.Backend, task: Task,
                 problems: Sequence[Problem], *, peer_models: Sequence[str], rounds: int, key: jax.Array, step: int,
                 settings: GRPOSettings, peer_params: dict[str, Any], format_reward: float = 0.0,
                 peer_answer_chars: int = 0, query_indices: Sequence[int] | None = None) -> Rollout:
  """T rounds of peers answering and the leader sampling a group per query (see the module doc).

  ``key`` is the step's key (``step_key``); ``query_indices`` are the problems' places in the step's batch
  (default 0, 1, ...: the whole batch), which fix each sample's key. ``peer_answer_chars`` > 0 shows the leader
  only the last that many characters of each peer answer (where the answer is stated); 0 shows them whole, as
  the MLPO baseline does.
  """
  num = len(problems)
  query_indices = list(range(num)) if query_indices is None else list(query_indices)
  if len(query_indices) != num:
    raise ValueError(f"mlpo_rollout: {len(query_indices)} query indices for {num} problems")
  own: list[list[str | None]] = [[None] * len(peer_models) for _ in problems]
  leader: list[str | None] = [None] * num
  ok = np.ones(num, bool)
  prompt_ids, tokens, texts, reasons, rewards, correct = [], [], [], [], [], []
  peer_correct = np.zeros(num)
  for r in range(rounds):
    answers = executor.run_sync(_peer_round(backend, task, problems, peer_models, own, leader, r, step, peer_params))
    round_prompts = []
    for q, responses in enumerate(answers):
      for k, response in enumerate(responses):
        if response.ok:
          own[q][k] = response.text
        else:
          ok[q] = False
      if r == 0:
        peer_correct[q] = np.mean([bool(x.ok and task.grade(problems[q], x.text)) for x in responses])
      candidates = [(f"Peer {k + 1}", own[q][k][-peer_answer_chars:] if peer_answer_chars else own[q][k])
                    for k in range(len(peer_models)) if own[q][k] is not None]
      round_prompts.append(chat_ids(model.tokenizer, prompts.synthesis_messages(task, problems[q], candidates)))
    samples = sample_groups(model, params, round_prompts,
                            leader_row_keys(key, query_indices, r, settings.group_size), settings)
    size = settings.group_size
    for q in range(num):
      group_texts = samples.texts[q * size:(q + 1) * size]
      right = [bool(task.grade(problems[q], t)) for t in group_texts]
      formed = [task.extract(t) is not None for t in group_texts] if format_reward else [False] * size
      rewards.append([float(a) + format_reward * float(b) for a, b in zip(right, formed)])
      correct.append(right)
      leader[q] = group_texts[0]
    prompt_ids.extend(round_prompts)
    tokens.extend(samples.tokens)
    texts.extend(samples.texts)
    reasons.extend(samples.finish_reasons)
  # Reorder round-major blocks to query-major: group (q, r) at q*T + r.
  order = [r * num + q for q in range(num) for r in range(rounds)]
  size = settings.group_size
  final = np.array([correct[(rounds - 1) * num + q][0] for q in range(num)], bool)
  return Rollout(
      prompt_ids=[prompt_ids[g] for g in order],
      samples=Samples([tokens[g * size + j] for g in order for j in range(size)],
                      [texts[g * size + j] for g in order for j in range(size)],
                      [reasons[g * size + j] for g in order for j in range(size)]),
      rewards=np.array([rewards[g] for g in order], np.float32),
      correct=np.array([correct[g] for g in order], bool),
      valid=np.repeat(ok, rounds),  # a query with any failed peer call is masked in every round
      final_correct=final & ok,
      peer_correct=peer_correct)


# ---------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------


def validate(config: ml_collections.ConfigDict) -> tuple[GRPOSettings, list[llm_pool.ModelSpec], list[str]]:
  """Checks the mlpo section and the peer pool; returns (GRPO settings, pool, the K peers' models)."""
  if "mlpo" not in config:
    raise ConfigError("the config has no 'mlpo' section; start from configs/mlpo.py")
  m = config.mlpo
  settings = GRPOSettings.from_config(m)
  for name in ("peers", "rounds", "queries_per_step"):
    if not isinstance(m[name], int) or m[name] < 1:
      raise ConfigError(f"mlpo.{name}={m[name]!r}; it must be a whole number >= 1")
  if m.rounds > _MAX_ROUNDS:
    raise ConfigError(f"mlpo.rounds={m.rounds}; at most {_MAX_ROUNDS} (the peers' sample indices hold that many)")
  if not isinstance(m.steps, int) or m.steps < 0:
    raise ConfigError(f"mlpo.steps={m.steps!r}; it must be a whole number >= 0")
  if not isinstance(m.peer_answer_chars, int) or m.peer_answer_chars < 0:
    raise ConfigError(f"mlpo.peer_answer_chars={m.peer_answer_chars!r}; give a whole number >= 0 (0: whole answers)")
  if m.format_reward < 0:
    raise ConfigError(f"mlpo.format_reward={m.format_reward}; it must be >= 0")
  specs = environment.pool_specs(config)
  try:
    llm_pool.validate_pool(specs, check_keys=config.llm.backend == "openai")
    llm_routing.check_routes(specs, config.llm.backend)
  except llm_base.ConfigError as e:
    raise ConfigError(str(e)) from None
  names = {s.name for s in specs}
  peers = list(m.peer_models) or [config.llm.decision_model]
  unknown = sorted(set(peers) - names)
  if unknown:
    raise ConfigError(f"mlpo.peer_models (or llm.decision_model) names {unknown}, not in the pool {sorted(names)}")
  if m.queries_per_step > config.task.num_train:
    raise ConfigError(f"mlpo.queries_per_step={m.queries_per_step} exceeds task.num_train={config.task.num_train}")
  return settings, specs, list(cycled(peers, m.peers))


def _resume_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  m = config.mlpo.to_dict()
  out = {name: m[name] for name in _RESUME_FIELDS}
  out["peer_models"] = list(out["peer_models"])
  out.update(seed=config.seed, task=config.task.name, source=config.task.source)
  return out


def _check_resume(saved: dict[str, Any], config: ml_collections.ConfigDict, directory: pathlib.Path) -> None:
  now = _resume_fields(config)
  changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
  if changed:
    raise ConfigError(f"the checkpoints in {directory} were trained with other settings ({'; '.join(changed)}); "
                      "use a new --workdir, or put the saved values back")


def train_leader(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                 backend: llm_base.Backend | None = None, task: Task | None = None,
                 problems: Sequence[Problem] | None = None, model: LeaderModel | None = None,
                 progress: bool = True, stop_after: int | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs (or resumes) MLPO leader training; returns a summary (steps, last metrics, leader folder).

  Args:
    config: a configs/mlpo.py config.
    workdir: checkpoints (``leader_checkpoints/``), ``metrics.jsonl``, the response cache and ``leader/``.
    backend: replaces the configured peers' backend (tests: a scripted one).
    task, problems: replace the configured task and its training split.
    model: replaces ``mlpo.leader`` (tests: a tiny decoder built elsewhere).
    progress: print one progress line per step.
    stop_after: stop (as on SIGTERM: save, raise StopRequested) after this many steps of this call (tests).
    log: where progress lines go.
  """
  workdir = pathlib.Path(workdir).absolute()
  settings, specs, peer_models = validate(config)
  m = config.mlpo
  workdir.mkdir(parents=True, exist_ok=True)
  if task is None:
    task = environment.load_task(config)
  if problems is None:
    problems = environment.load_splits(config, task)["train"]
  if model is None:
    model = load_leader_model(m.leader, seed=int(config.seed), dtype=m.leader_dtype)
  built = backend is None
  if built:
    backend = environment.make_backend(config, specs, task, list(problems), workdir)
  try:  # a dead peer endpoint is one clear EndpointError before any work (on every process of a multi-host run)
    _on_every_process(lambda: (llm_base.check_models(backend, peer_models),
                               llm_preflight.preflight(backend, peer_models)), "peer preflight")
    return _train(config, workdir, settings, peer_models, backend, task, list(problems), model, progress,
                  stop_after, log)
  finally:
    if built:
      executor.close_backend(backend)


def _on_every_process(fn: Callable[[], Any], what: str) -> None:
  """``fn()`` on every process; a failure on one of them stops all of them, each with one line.

  The failing process raises its own exception; the others raise ``distributed.PeerLostError`` naming it (the
  exception travels as text: not every exception survives pickling).
  """
  if not distributed.is_multi_process():
    fn()
    return
  error, failure = None, None
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except  # re-raised below, here and (as text) on the others
    error, failure = e, f"{type(e).__name__}: {' '.join(str(e).split())}"
  failures = distributed.gather_objects(failure, what)
  if error is not None:
    raise error
  for index, text in enumerate(failures):
    if text is not None:
      raise distributed.PeerLostError(f"process {index} failed its {what} ({text}); fix that and start every "
                                      "process again")


def _step_rollout(config, model, params, backend, task, chosen, peer_models, step, settings, peer_params):
  """The step's rollout: this process's share of the queries run here, the whole batch gathered on every process."""
  m = config.mlpo
  key = step_key(int(config.seed), step)

  def run_share(items):
    if not items:  # more processes than queries: nothing to run here
      return []
    roll = mlpo_rollout(model, params, backend, task, [p for _, p in items], peer_models=peer_models,
                        rounds=int(m.rounds), key=key, step=step, settings=settings, peer_params=peer_params,
                        format_reward=float(m.format_reward), peer_answer_chars=int(m.peer_answer_chars),
                        query_indices=[q for q, _ in items])
    return roll.queries(int(m.rounds), settings.group_size)

  return Rollout.join(distributed.run_shares(list(enumerate(chosen)), run_share, f"leader step {step + 1} rollout"))


def _train(config, workdir, settings, peer_models, backend, task, problems, model, progress, stop_after, log):
  m = config.mlpo
  ref_params = model.params  # frozen: the update returns new arrays and never writes into these
  learner = GRPOLearner(model.config, settings, ref_params)
  params, opt_state = model.params, learner.init(model.params)
  ckpt = checkpointing.Checkpointer(workdir / "leader_checkpoints", max_to_keep=config.checkpoint.max_to_keep)
  primary = distributed.is_primary()
  start = 0
  if ckpt.latest_step() is not None:
    _check_resume(dict(ckpt.metadata().get("resume", {})), config, ckpt.directory)
    state, meta = ckpt.restore(checkpointing.abstract_tree({"params": params, "opt_state": opt_state}))
    params, opt_state, start = state["params"], state["opt_state"], int(meta["step"])
    if primary:
      log(f"leader: resumed from step {start} ({ckpt.directory})")
  writer = MetricWriter(workdir, tensorboard=False) if primary else None  # process 0 alone writes metrics
  if writer is not None:
    writer.truncate_stage(STAGE, start)
  peer_params = {"temperature": float(config.llm.temperature), "max_tokens": int(config.llm.max_tokens)}
  last: dict[str, float] = {}

  def save(step: int) -> None:
    if step not in ckpt.all_steps():
      ckpt.save(step, {"params": params, "opt_state": opt_state},
                {"step": step, "resume": _resume_fields(config), "decoder_config": model.config.to_dict(),
                 "tokenizer": model.tokenizer_ref, "leader_source": model.source}, force=True)

  done = start
  try:
    with PreemptionWatcher() as watcher:
      for step in range(start, int(m.steps)):
        began = time.perf_counter()
        rng = np.random.default_rng([int(config.seed), _BATCH_STREAM, step])
        chosen = [problems[i] for i in rng.choice(len(problems), size=int(m.queries_per_step), replace=False)]
        roll = _step_rollout(config, model, params, backend, task, chosen, peer_models, step, settings, peer_params)
        failed = 1.0 - float(np.mean(roll.valid))
        if not roll.valid.any() or failed > float(config.llm.max_failed_fraction):
          raise executor.FailedCallsError(
              f"leader step {step + 1}: {failed:.0%} of the queries had a failed peer call; check the endpoints or "
              f"raise llm.max_failed_fraction (now {config.llm.max_failed_fraction:g})")
        batch = build_batch(roll.prompt_ids, roll.samples.tokens, roll.rewards, roll.valid, settings.adv_eps)
        params, opt_state, metrics = learner.update(params, opt_state, batch, step=step + 1)
        ok = roll.valid
        done = step + 1
        last = dict(metrics, reward=float(roll.rewards[ok].mean()), accuracy=float(roll.correct[ok].mean()),
                    final_accuracy=float(roll.final_correct[roll.valid[::int(m.rounds)]].mean()),  # answered queries
                    peer_accuracy=float(roll.peer_correct.mean()),
                    completion_tokens=float(np.mean([len(t) for t in roll.samples.tokens])), failed=failed,
                    seconds=time.perf_counter() - began)
        if writer is not None:
          writer.write(STAGE, done, last)
        if progress and primary:
          log(f"leader step {done}/{m.steps}: reward {last['reward']:.3f} accuracy {last['accuracy']:.3f} "
              f"(peers {last['peer_accuracy']:.3f}) loss {last['loss']:.4f} kl {last['kl']:.4f} "
              f"{last['seconds']:.1f}s")
        if done % int(config.checkpoint.every_steps) == 0 or done == int(m.steps):
          save(done)
        stop = watcher.stop_requested or (stop_after is not None and done - start >= stop_after)
        if distributed.any_process(stop, f"leader step {done} stop"):  # a signal to one process stops every one
          save(done)
          raise StopRequested(f"stopped after leader step {done}; checkpoint saved in {ckpt.directory}; run the "
                              "same command to resume")
    save(done)
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
  host_params = jax.device_get(params)
  leader_dir = distributed.on_primary(lambda: leader_export.save_leader(
      workdir / "leader", model.config, host_params, model.tokenizer_ref,
      info={"step": done, "trained_from": model.source, "task": config.task.name}), "leader export")
  return {"steps": done, "last": last, "leader_dir": str(leader_dir)}

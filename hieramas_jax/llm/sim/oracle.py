"""The exact oracle: expected solve rate, cost and reward of plans under a SimWorld.

:class:`Oracle` computes from the world's probability model, without text, the
exact solve rate, expected cost and expected reward of an assignment and DAG
for a query type (subject, level); ``search`` finds the best plans with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hieramas_jax import graphs, reward_formula
from hieramas_jax.llm.base import Message, UnknownModelError
from hieramas_jax.llm.sim import search
from hieramas_jax.llm.sim.answers import Latent
from hieramas_jax.llm.sim.world import SimWorld
from hieramas_jax.llm.tokens import CHARS_PER_TOKEN, count_message_tokens
from hieramas_jax.tasks.base import Problem, RoleSpec, Task


def reward_of(solved: bool | float, cost: float, c_s: float = reward_formula.DEFAULT_C_S,
              c_f: float = reward_formula.DEFAULT_C_F) -> float:
  """The paper's cost-aware reward (``reward_formula``); ``solved`` may be a probability (expected reward)."""
  return float(reward_formula.cost_aware_reward(float(solved), float(cost), c_s, c_f, xp=reward_formula.SCALAR))


@dataclasses.dataclass(frozen=True)
class OracleResult:
  """Expected outcome of one plan for one query type.

  Attributes:
    solve_rate: chance that the decision node answers right (exact under the model).
    expected_cost: expected USD of all calls (expected token counts).
    expected_reward: ``reward_of(solve_rate, expected_cost)``, i.e. the reward's
      expectation over correctness with the cost at its expectation (the cost's
      own spread, a few percent, is ignored).
    role_solve_rates: per role, the chance its output is right; None if dropped.
  """

  solve_rate: float
  expected_cost: float
  expected_reward: float
  role_solve_rates: tuple[float | None, ...]


Assignment = Sequence[Sequence[str | None]]


def _poisson_binomial(ps: Sequence[float]) -> list[float]:
  dist = [1.0]
  for p in ps:
    nxt = [0.0] * (len(dist) + 1)
    for k, q in enumerate(dist):
      nxt[k] += q * (1.0 - p)
      nxt[k + 1] += q * p
    dist = nxt
  return dist


def _majority_right(dist: Sequence[float], samples: int) -> float:
  """Chance that the right value (index 0) wins a vote of ``samples`` draws from ``dist``.

  ``dist`` is over [right, shared wrong values..., own wrong answer]; own wrong
  answers each get one vote. Ties are broken uniformly (first-stated rule).
  """
  shared = len(dist) - 2
  win = 0.0
  for counts in _compositions(samples, len(dist)):
    prob = math.factorial(samples)
    for c, q in zip(counts, dist):
      prob *= q**c / math.factorial(c)
    if prob == 0.0 or counts[0] == 0:
      continue
    own = counts[-1]
    best_wrong = max(list(counts[1:1 + shared]) + [1 if own else 0])
    if counts[0] > best_wrong:
      win += prob
    elif counts[0] == best_wrong:
      tied = 1 + sum(1 for c in counts[1:1 + shared] if c == best_wrong) + (own if best_wrong == 1 else 0)
      win += prob / tied
  return win


def _compositions(total: int, parts: int) -> Iterable[tuple[int, ...]]:
  if parts == 1:
    yield (total,)
    return
  for first in range(total + 1):
    for rest in _compositions(total - first, parts - 1):
      yield (first,) + rest


class Oracle:
  """Exact expected solve rate, cost and reward of plans under a SimWorld.

  It enumerates the joint right/wrong outcomes of the roles (2^R states, R <= 16)
  and, per role, the outcomes of its proposers, with the probabilities of
  ``SimWorld.p_correct``. Expected prompt tokens come from the task's own prompt
  builders with placeholder texts of each model's expected length, counted like
  the simulator counts them.

  Args:
    world: the simulated pool.
    task: the task whose prompts the executor uses.
    roles: the roles of the plans (their order is the adjacency's order).
    c_s, c_f: reward constants.
  """

  def __init__(self, world: SimWorld, task: Task, roles: Sequence[RoleSpec], *,
               c_s: float = reward_formula.DEFAULT_C_S, c_f: float = reward_formula.DEFAULT_C_F):
    if len(roles) > 16:
      raise ValueError(f"the exact oracle enumerates 2^R outcomes; R={len(roles)} > 16 is too many")
    self.world = world
    self.task = task
    self.roles = tuple(roles)
    self.c_s, self.c_f = c_s, c_f
    self._placeholders: dict[str, str] = {}
    self._orders: dict[tuple[Any, ...], tuple[list[int], dict[int, list[int]]]] = {}

  def _placeholder(self, model: str) -> str:
    text = self._placeholders.get(model)
    if text is None:
      n = self.world.models[model].expected_completion_tokens
      text = self._placeholders[model] = "x" * int(round(n * CHARS_PER_TOKEN))
    return text

  def _prompt_tokens(self, messages: Sequence[Message]) -> int:
    return count_message_tokens(messages, exact=False)

  def evaluate(self, subject: str, level: int, assignment: Assignment, adjacency: Any, decision_model: str, *,
               question: str | None = None, question_tokens: int = 40, uid: str | None = None) -> OracleResult:
    """Expected outcome of (assignment [R][P+1], adjacency [R,R], decision model) on one query type.

    ``question`` (or a stand-in of ``question_tokens`` tokens) sizes the prompts for costs.
    In an anchored world the solve rate is the exact mean over the problems of the
    type (their hardness and wrong-answer traits), or that of problem ``uid`` alone.
    """
    world = self.world
    order, preds = self._execution_order(assignment, adjacency, decision_model)
    problem = Problem(uid="oracle", question=question or "q" * int(question_tokens * CHARS_PER_TOKEN),
                      answer="", subject=subject, level=level)
    cost = self._expected_cost(problem, assignment, order, preds, decision_model)
    if world.answers is None:
      solve, role_rates = self._right_wrong_solve_rates(subject, level, assignment, order, preds, decision_model)
    else:
      latents = world.answers.latents() if uid is None else [world.answers.latent_of(uid)]
      shares = np.array([lat.prob for lat in latents])
      solves, rates = self._solve_values(subject, level, assignment, order, preds, decision_model, latents)
      solve = float(shares @ solves)
      role_rates = [None if r is None else float(shares @ r) for r in rates]
    return OracleResult(solve_rate=solve, expected_cost=cost,
                        expected_reward=reward_of(solve, cost, self.c_s, self.c_f),
                        role_solve_rates=tuple(role_rates))

  def _execution_order(self, assignment: Assignment, adjacency: Any,
                       decision_model: str) -> tuple[list[int], dict[int, list[int]]]:
    """The roles that run, in the executor's layer order, and each one's running predecessors in that order."""
    n = len(self.roles)
    if len(assignment) != n:
      raise ValueError(f"assignment has {len(assignment)} rows; expected one per role ({n})")
    for name in {m for row in assignment for m in row if m is not None} | {decision_model}:
      if name not in self.world.models:
        raise UnknownModelError(f"unknown model {name!r}; the simulated pool has {sorted(self.world.models)}")
    active = [r for r, row in enumerate(assignment) if len(row) > 0 and row[-1] is not None]
    raw = np.asarray(adjacency)
    # Searches evaluate many plans on few DAGs; validating each time would cost a third of an evaluation.
    key = (raw.dtype.str, raw.shape, raw.tobytes(), tuple(active))
    found = self._orders.get(key)
    if found is None:
      adj = graphs.validate_adjacency(raw, n)
      # Layers of the running roles alone: a skipped role holds back none of its successors.
      order = [active[i] for i in graphs.topological_order(adj[np.ix_(active, active)])]
      edges = adj.tolist()
      if len(self._orders) > 100_000:
        self._orders.clear()
      found = self._orders[key] = (order, {r: [i for i in order if edges[i][r]] for r in order})
    return found

  def _expected_cost(self, problem: Problem, assignment: Assignment, order: Sequence[int],
                     preds: Mapping[int, Sequence[int]], decision_model: str) -> float:
    """Expected USD of a plan's calls (by linearity; independent of correctness)."""
    models = self.world.models
    cost = 0.0
    for r in order:
      role, row = self.roles[r], assignment[r]
      seen = [(self.roles[i].name, self._placeholder(assignment[i][-1])) for i in preds[r]]
      proposers = [m for m in row[:-1] if m is not None]
      if proposers:
        tokens = self._prompt_tokens(self.task.proposer_messages(problem, role, seen))
        for m in proposers:
          cost += models[m].cost(tokens, models[m].expected_completion_tokens)
      synth = row[-1]
      tokens = self._prompt_tokens(self.task.synthesizer_messages(
          problem, role, [self._placeholder(m) for m in proposers], seen))
      cost += models[synth].cost(tokens, models[synth].expected_completion_tokens)
    outputs = [(self.roles[r].name, self._placeholder(assignment[r][-1])) for r in order]
    tokens = self._prompt_tokens(self.task.decision_messages(problem, outputs))
    return cost + models[decision_model].cost(tokens, models[decision_model].expected_completion_tokens)

  def _right_wrong_solve_rates(self, subject: str, level: int, assignment: Assignment, order: Sequence[int],
                               preds: Mapping[int, Sequence[int]],
                               decision_model: str) -> tuple[float, list[float | None]]:
    """Exact solve rate and per-role rates in the invented world: joint right/wrong states of the roles done."""
    world = self.world
    states: dict[tuple[int, ...], float] = {(): 1.0}
    slot = {}
    role_rates: list[float | None] = [None] * len(self.roles)
    for r in order:
      row = assignment[r]
      proposers = [m for m in row[:-1] if m is not None]
      synth = row[-1]
      nxt: dict[tuple[int, ...], float] = {}
      memo: dict[int, float] = {}
      for state, prob in states.items():
        k_right = sum(state[slot[i]] for i in preds[r])
        if k_right not in memo:
          k_wrong = len(preds[r]) - k_right
          name = self.roles[r].name
          dist = _poisson_binomial([world.p_correct(m, subject, level, k_right, k_wrong, name) for m in proposers])
          memo[k_right] = sum(
              q * world.p_correct(synth, subject, level, k_right + c, k_wrong + len(proposers) - c, name)
              for c, q in enumerate(dist))
        q_right = memo[k_right]
        nxt[state + (1,)] = nxt.get(state + (1,), 0.0) + prob * q_right
        nxt[state + (0,)] = nxt.get(state + (0,), 0.0) + prob * (1.0 - q_right)
      slot[r] = len(slot)
      states = nxt
      role_rates[r] = sum(p for s, p in states.items() if s[slot[r]])
    solve = 0.0
    for state, prob in states.items():
      k_right = sum(state)
      solve += prob * world.p_correct(decision_model, subject, level, k_right, len(state) - k_right)
    return solve, role_rates

  def _solve_values(self, subject: str, level: int, assignment: Assignment, order: Sequence[int],
                    preds: Mapping[int, Sequence[int]], decision_model: str,
                    latents: Sequence[Latent]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Exact solve rate and per-role rates, one entry per problem trait (anchored worlds).

    A state is (the answer values of the roles some later role still reads, the count
    of each value over all roles done): what every later call and the decision node
    depend on. Roles leave the first part once their last reader is done. Which
    states occur does not depend on the traits, so each state carries one
    probability per trait (an array) and the walk is done once.
    """
    num_values = self.world.answers.num_values
    position = {r: i for i, r in enumerate(order)}
    last_reader = {r: max((position[j] for j in order if r in preds[j]), default=-1) for r in order}
    dists: dict[tuple[str, tuple[int, ...], str | None], np.ndarray] = {}

    def dist(model: str, counts: tuple[int, ...], role: str | None) -> np.ndarray:
      key = (model, counts, role)
      found = dists.get(key)
      if found is None:
        found = dists[key] = np.array([self.world.value_distribution(model, subject, level, counts, role, lat)
                                       for lat in latents])
      return found  # [traits, values]

    live: list[int] = []
    states: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray] = {
        ((), (0,) * num_values): np.ones(len(latents))}
    role_rates: list[np.ndarray | None] = [None] * len(assignment)
    for step, r in enumerate(order):
      row = assignment[r]
      proposers = [m for m in row[:-1] if m is not None]
      synth, name = row[-1], self.roles[r].name
      slots = [live.index(i) for i in preds[r]]
      memo: dict[tuple[int, ...], np.ndarray] = {}
      nxt: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray] = {}
      right = np.zeros(len(latents))
      for (values, totals), prob in states.items():
        seen = [0] * num_values
        for slot in slots:
          seen[values[slot]] += 1
        key = tuple(seen)
        out = memo.get(key)
        if out is None:
          out = memo[key] = self._supernode_values(proposers, synth, name, key, dist)
        right += prob * out[:, 0]
        for v in range(num_values):
          if not out[:, v].any():
            continue
          state = (values + (v,), totals[:v] + (totals[v] + 1,) + totals[v + 1:])
          add = prob * out[:, v]
          held = nxt.get(state)
          nxt[state] = add if held is None else held + add
      role_rates[r] = right
      live.append(r)
      keep = [i for i, role in enumerate(live) if last_reader[role] > step]
      live = [live[i] for i in keep]
      states = {}
      for (values, totals), prob in nxt.items():
        state = (tuple(values[i] for i in keep), totals)
        held = states.get(state)
        states[state] = prob if held is None else held + prob
    solve = np.zeros(len(latents))
    for (_, totals), prob in states.items():
      solve += prob * dist(decision_model, totals, None)[:, 0]
    return solve, role_rates

  @staticmethod
  def _supernode_values(proposers: Sequence[str], synth: str, role: str, seen: tuple[int, ...],
                        dist: Any) -> np.ndarray:
    """Distribution [traits, values] of a role's output value given its predecessors' values."""
    proposals: dict[tuple[int, ...], np.ndarray | float] = {(0,) * len(seen): 1.0}
    for m in proposers:
      d = dist(m, seen, role)
      nxt: dict[tuple[int, ...], Any] = {}
      for counts, prob in proposals.items():
        for v in range(len(seen)):
          if d[:, v].any():
            key = counts[:v] + (counts[v] + 1,) + counts[v + 1:]
            nxt[key] = nxt.get(key, 0.0) + prob * d[:, v]
      proposals = nxt
    out = 0.0
    for counts, prob in proposals.items():
      read = tuple(a + b for a, b in zip(seen, counts))
      out = out + np.asarray(prob)[..., None] * dist(synth, read, role)
    return out

  def single_call(self, subject: str, level: int, model: str, *, uid: str | None = None) -> float:
    """Accuracy of one plain call (no role, nothing read) on a query type, or on problem ``uid``."""
    world = self.world
    if world.answers is None:
      return world.p_correct(model, subject, level, 0, 0)
    latents = world.answers.latents() if uid is None else [world.answers.latent_of(uid)]
    return sum(lat.prob * world.p_correct(model, subject, level, 0, 0, None, lat.shift) for lat in latents)

  def self_consistency(self, subject: str, level: int, model: str, *, samples: int = 5,
                       uid: str | None = None) -> float:
    """Exact accuracy of a majority vote over ``samples`` plain calls (baselines.majority_vote).

    Votes go by answer value; a tie goes to the value stated first, which for
    exchangeable samples is each tied value with equal chance. Own wrong answers
    never agree with anything. In the invented world every wrong answer counts as
    its own (its random perturbations rarely coincide), so there it is an approximation.
    """
    world = self.world
    if world.answers is None:
      latents = [Latent(0.0, (1.0,), 1.0)]
    else:
      latents = world.answers.latents() if uid is None else [world.answers.latent_of(uid)]
    total = 0.0
    for latent in latents:
      if world.answers is None:
        p = world.p_correct(model, subject, level, 0, 0)
        dist = [p, 1.0 - p]
      else:
        dist = world.value_distribution(model, subject, level, (0,) * world.answers.num_values, None, latent)
      total += latent.prob * _majority_right(dist, samples)
    return total

  def best_assignment(self, subject: str, level: int, adjacency: Any, decision_model: str, *,
                      proposers: int = 2, models: Sequence[str] | None = None, restarts: int = 6,
                      max_sweeps: int = 20, seed: int = 0, objective: str = "expected_reward",
                      **evaluate_kwargs: Any) -> tuple[list[list[str | None]], OracleResult]:
    """The best assignment [R][proposers+1] found on one DAG, and its result (``search.best_plan``)."""
    found = search.best_plan(self, subject, level, [adjacency], decision_model, proposers=proposers,
                                    models=models, restarts=restarts, max_sweeps=max_sweeps, seed=seed,
                                    objective=objective, **evaluate_kwargs)
    return found.assignment, found.result

  def best_dag(self, subject: str, level: int, dags: Sequence[Any], decision_model: str,
               **search_kwargs: Any) -> tuple[int, list[list[str | None]], OracleResult, list[OracleResult]]:
    """The DAG of ``dags`` (each [R,R]) whose best assignment scores highest.

    Returns (index, its assignment, its result, the best result of every DAG).
    """
    if not dags:
      raise ValueError("best_dag needs at least one DAG")
    found = [self.best_assignment(subject, level, d, decision_model, **search_kwargs) for d in dags]
    objective = search_kwargs.get("objective", "expected_reward")
    index = max(range(len(dags)), key=lambda i: getattr(found[i][1], objective))
    return index, found[index][0], found[index][1], [f[1] for f in found]

"""The method registry: every method the evaluation can run, with its typed settings, flags and setup text.

Adding a baseline takes two places: its function ``fn(ctx, settings) ->
list[QueryResult]`` with its frozen settings dataclass (fields made with
``options.option`` name their flag and config field), and one ``register`` call
below. ``launch.evaluate`` then offers it in ``--methods`` with its description,
defines any new flag of its settings, and ``evaluation.evaluate`` runs it as a
row of the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

from hieramas_jax.baselines import layered, leader, options, peers, single_model, topologies
from hieramas_jax.baselines.core import MethodContext, QueryResult
from hieramas_jax.llm.base import Backend
from hieramas_jax.tasks.base import Problem, Task

MethodFn = Callable[[MethodContext, Any], Sequence[QueryResult]]


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
  """One registered method.

  Attributes:
    name: its name in ``--methods`` and (unless ``row`` says otherwise) its row.
    function: ``function(ctx, settings)`` -> one QueryResult per problem.
    settings: its frozen settings dataclass.
    description: one line for the command-line help.
    setup: the row's setup column, formatted with the settings' fields.
    presets: settings this entry fixes (e.g. cot = single with chain_of_thought).
    row: the row's name, formatted with the settings' fields (default: ``name``).
    each_pool_model: a settings field set to every pool model in turn, a row each.
    uses_classifier: its setup notes when the run has no graph classifier.
  """

  name: str
  function: MethodFn
  settings: type
  description: str
  setup: str
  presets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  row: str = ""
  each_pool_model: str | None = None
  uses_classifier: bool = False

  def make_settings(self, **values: Any) -> Any:
    """Settings from keyword values (the entry's presets first); unknown names raise ValueError."""
    fields = [f.name for f in dataclasses.fields(self.settings) if f.name not in self.presets]
    unknown = sorted(set(values) - set(fields))
    if unknown:
      raise ValueError(f"method {self.name!r} has no setting(s) {unknown}; its settings are {fields}")
    return self.settings(**{**self.presets, **values})

  def row_name(self, settings: Any) -> str:
    return self.row.format(**dataclasses.asdict(settings)) if self.row else self.name

  def describe(self, settings: Any) -> str:
    return self.setup.format(**dataclasses.asdict(settings))


@dataclasses.dataclass(frozen=True)
class Flag:
  """A command-line flag that sets an option of one or more methods."""

  name: str
  default: Any
  help: str
  config: str | None
  pool_model: bool
  methods: tuple[str, ...]


class Registry:
  """Methods by name, in the order they were registered (the report's row order)."""

  def __init__(self, methods: Sequence[Method] = ()):
    self._methods: dict[str, Method] = {}
    for method in methods:
      self.register(method)

  def register(self, method: Method) -> Method:
    """Adds a method; its flags must agree with those other methods already define."""
    if method.name in self._methods:
      raise ValueError(f"method {method.name!r} is registered already; pick another name")
    if not (dataclasses.is_dataclass(method.settings) and method.settings.__dataclass_params__.frozen):
      raise TypeError(f"method {method.name!r}: settings must be a frozen dataclass, got {method.settings!r}")
    self._methods[method.name] = method
    try:
      self.flags()
    except ValueError:
      del self._methods[method.name]
      raise
    return method

  def copy(self) -> "Registry":
    return Registry(list(self))

  def __iter__(self) -> Iterator[Method]:
    return iter(self._methods.values())

  def __contains__(self, name: str) -> bool:
    return name in self._methods

  def names(self) -> list[str]:
    return list(self._methods)

  def get(self, name: str) -> Method:
    if name not in self._methods:
      raise KeyError(f"unknown method {name!r}; choose from: {', '.join(self._methods)}")
    return self._methods[name]

  def flags(self) -> list[Flag]:
    """Every flag of the registered settings, once, with the methods it sets."""
    found: dict[str, Flag] = {}
    for method in self:
      for field in dataclasses.fields(method.settings):
        opt = options.option_of(field)
        if opt is None or opt.flag is None or field.name in (*method.presets, method.each_pool_model):
          continue
        flag = Flag(opt.flag, field.default, opt.help, opt.config, opt.pool_model, (method.name,))
        seen = found.get(opt.flag)
        if seen is not None:
          if (seen.default, seen.config, seen.pool_model) != (flag.default, flag.config, flag.pool_model):
            raise ValueError(f"flag --{opt.flag} of method {method.name!r} disagrees with methods {seen.methods} "
                             "on its default, config field or pool check; give it another flag name")
          flag = dataclasses.replace(seen, methods=seen.methods + (method.name,))
        found[opt.flag] = flag
    return [dataclasses.replace(f, help=f.help.format(methods=", ".join(f.methods))) for f in found.values()]

  def help(self) -> str:
    """One line per method: its name and description."""
    return "\n".join(f"{m.name}: {m.description}" for m in self)


def run(method: str, problems: Sequence[Problem], backend: Backend, task: Task, *,
        params: Mapping[str, Any] | None = None, registry: Registry | None = None,
        **settings: Any) -> list[QueryResult]:
  """Runs a registered method on problems, e.g. ``run("debate", problems, backend, task, model="m", agents=3)``.

  Methods that use a trained HieraMAS (selector_*, hieramas*) run through
  ``hieramas_jax.evaluation.evaluate`` instead.
  """
  entry = (registry or METHODS).get(method)
  ctx = MethodContext(problems=list(problems), backend=backend, task=task, params=dict(params or {}))
  return list(entry.function(ctx, entry.make_settings(**settings)))


_SINGLE_CALLS = "{model} in every role (1 call, no proposers) and as decision node"
_DENSITY = "(density {density[0]:g}-{density[1]:g})"

METHODS = Registry([
    Method("single", single_model.single, single_model.SingleSettings, "one call of --fixed_model", "{model}"),
    Method("cot", single_model.single, single_model.SingleSettings,
           "one call of --fixed_model, asked to reason step by step", "{model}, step by step",
           presets={"chain_of_thought": True}),
    Method("self_consistency", single_model.self_consistency, single_model.SelfConsistencySettings,
           "--sc_samples samples of --baseline_model, majority", "{model}, {samples} samples, majority"),
    Method("debate", peers.debate, peers.DebateSettings,
           "--debate_agents x --debate_rounds of --baseline_model, majority",
           "{model}, {agents} agents x {rounds} rounds, majority"),
    Method("mixture", peers.mixture, peers.MixtureSettings,
           "--mixture_proposers proposers + one synthesizer (--baseline_model)",
           "{model}, {proposers} proposers + synthesizer"),
    Method("mlpo", leader.mlpo, leader.MLPOSettings,
           "MLPO-style untrained leader + --mlpo_peers peers x --mlpo_rounds",
           "{leader_model}, leader + {peers} peers x {rounds} rounds"),
    Method("neuromas", layered.neuromas, layered.NeuroMASSettings,
           "NeuroMAS-style --neuromas_depth x --neuromas_width layers + aggregator",
           "{model}, {depth} x {width} layers + aggregator"),
    Method("full_graph", topologies.full_graph, topologies.FullGraphSettings,
           "the paper's Full-Graph: llm.decision_model as one call per role (no proposers) and as decision node, "
           "on the full DAG", f"{_SINGLE_CALLS}, full DAG"),
    Method("random_graph", topologies.random_graph, topologies.RandomGraphSettings,
           "the paper's Random-Graph: as full_graph on ONE seeded random DAG for the split "
           "(graphs.candidate_density_range)", f"{_SINGLE_CALLS}, one random DAG for all queries {_DENSITY}"),
    Method("selector_full_graph", topologies.selector_full_graph, topologies.SelectorSettings,
           "the selector's models on the full DAG of the roles", "selector's models, full DAG"),
    Method("selector_random_graph", topologies.selector_random_graph, topologies.SelectorRandomGraphSettings,
           "the selector's models on a random DAG per query (graphs.candidate_density_range)",
           f"selector's models, a random DAG per query {_DENSITY}"),
    Method("hieramas", topologies.hieramas, topologies.HieraMASSettings,
           "the selector's models on the classifier's best of K DAGs",
           "selector's models, classifier's best of {num_candidates} DAGs", uses_classifier=True),
    Method("hieramas_no_selection", topologies.hieramas_no_selection, topologies.NoSelectionSettings,
           "--fixed_model at every position, the classifier's DAG", "{model} at every position, classifier's DAG",
           uses_classifier=True),
    Method("hieramas_no_classifier", topologies.hieramas_no_classifier, topologies.NoClassifierSettings,
           "the selector's models on one random DAG (the same for every query)",
           "selector's models, one random DAG for all queries"),
    Method("single_each", single_model.single, single_model.SingleSettings,
           "one row per pool model: a single plain call of that model", "{model}", row="single[{model}]",
           each_pool_model="model"),
])

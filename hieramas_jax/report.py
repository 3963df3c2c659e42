"""Evaluation report: per-method table (Markdown, CSV, JSON), Pareto plot, topology pictures.

A :class:`MethodRow` summarises one method's ``results.QueryResult``
list on a split: accuracy over the gradable queries (a query with any failed
call is an error record: counted in ``failed``, never graded, neither right nor
wrong), the replies cut at max_tokens (``truncated``), and per query means of
cost, tokens, calls and latency (critical path). The Pareto front
is taken over (accuracy up, cost down). Plots use matplotlib's Agg backend (no
display needed).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import textwrap
from typing import Any, Iterable, Sequence

import numpy as np

from hieramas_jax import graphs
from hieramas_jax.jsonio import strict_json
from hieramas_jax.results import QueryResult, grade
from hieramas_jax.tasks.base import Problem, Task


@dataclasses.dataclass
class MethodRow:
  """One line of the table.

  Attributes:
    method: the method key (e.g. ``hieramas``, ``single[GPT-5-mini]``).
    setup: models and sizes of the method, in words.
    queries: problems asked.
    failed: queries with a failed call or without a final answer (not graded).
    solved: gradable queries answered right.
    accuracy: solved / (queries - failed); NaN when nothing was gradable.
    cost_usd, prompt_tokens, completion_tokens, calls, latency_s: means per query
      (over all queries; a failed query's calls cost too).
    truncated: replies cut at max_tokens (finish_reason 'length'), over all queries.
    wall_s: seconds the method took in this evaluation (caches make re-runs fast).
    on_front: on the accuracy-cost Pareto front of the rows it was compared with.
  """

  method: str
  setup: str
  queries: int
  failed: int
  solved: int
  accuracy: float
  cost_usd: float
  prompt_tokens: float
  completion_tokens: float
  calls: float
  latency_s: float
  truncated: int = 0
  wall_s: float = 0.0
  on_front: bool = False

  @property
  def tokens(self) -> float:
    return self.prompt_tokens + self.completion_tokens

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["tokens"] = self.tokens
    return out


def grade_results(task: Task, problems: Sequence[Problem], results: Sequence[QueryResult]) -> list[bool | None]:
  """Grades each result (``results.grade``) after checking it answers its problem; the verdicts.

  Per query: right / wrong, or None when it failed (a failed call or no final answer): never graded.
  """
  if len(problems) != len(results):
    raise ValueError(f"{len(problems)} problems but {len(results)} results; give one result per problem")
  for p, r in zip(problems, results):
    if p.uid != r.uid:
      raise ValueError(f"result {r.uid!r} is paired with problem {p.uid!r}; keep the problems' order")
  return grade(task, results)


def summarize(method: str, problems: Sequence[Problem], results: Sequence[QueryResult], task: Task, *,
              setup: str = "", wall_s: float = 0.0) -> MethodRow:
  """Grades the results (``grade_results``: sets their ``answer`` and ``correct``) and averages their measures."""
  verdicts = grade_results(task, problems, results)
  n = len(results)
  graded = [v for v in verdicts if v is not None]
  solved = sum(graded)

  def mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else float("nan")

  return MethodRow(
      method=method, setup=setup, queries=n, failed=n - len(graded), solved=int(solved),
      accuracy=solved / len(graded) if graded else float("nan"),
      cost_usd=mean(r.cost_usd for r in results), prompt_tokens=mean(r.prompt_tokens for r in results),
      completion_tokens=mean(r.completion_tokens for r in results), calls=mean(r.num_calls for r in results),
      latency_s=mean(r.latency_s for r in results), truncated=sum(r.truncated for r in results),
      wall_s=float(wall_s))


def pareto_front(rows: Sequence[MethodRow]) -> list[bool]:
  """Per row: no other row is at least as accurate and at most as costly, and better in one."""
  flags = []
  for a in rows:
    if math.isnan(a.accuracy):
      flags.append(False)
      continue
    dominated = any(
        not math.isnan(b.accuracy) and b.accuracy >= a.accuracy and b.cost_usd <= a.cost_usd and
        (b.accuracy > a.accuracy or b.cost_usd < a.cost_usd) for b in rows if b is not a)
    flags.append(not dominated)
  return flags


def mark_front(rows: Sequence[MethodRow]) -> None:
  for row, on in zip(rows, pareto_front(rows)):
    row.on_front = on


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

_COLUMNS = (("method", "method"), ("setup", "setup"), ("accuracy", "accuracy"), ("cost_usd", "cost USD/query"),
            ("tokens", "tokens/query"), ("calls", "calls/query"), ("latency_s", "latency s/query"),
            ("failed", "failed"), ("truncated", "truncated"), ("on_front", "Pareto"))


def _cell(row: MethodRow, key: str) -> str:
  if key == "accuracy":
    return "n/a" if math.isnan(row.accuracy) else f"{row.accuracy:.3f} ({row.solved}/{row.queries - row.failed})"
  if key == "cost_usd":
    return f"{row.cost_usd:.6f}"
  if key == "tokens":
    return f"{row.tokens:.0f}"
  if key == "calls":
    return f"{row.calls:.2f}"
  if key == "latency_s":
    return f"{row.latency_s:.2f}"
  if key == "on_front":
    return "yes" if row.on_front else ""
  return str(getattr(row, key))


def markdown_table(rows: Sequence[MethodRow], highlight: Sequence[str] = ("hieramas",)) -> str:
  """The table as GitHub Markdown; highlighted methods in bold."""
  lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |",
           "|" + "|".join("---" if key in ("method", "setup") else "---:" for key, _ in _COLUMNS) + "|"]
  for row in rows:
    cells = [_cell(row, key).replace("|", "/") for key, _ in _COLUMNS]
    if row.method in highlight:
      cells[0] = f"**{cells[0]}**"
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


_CSV_FIELDS = ("method", "setup", "queries", "failed", "solved", "accuracy", "cost_usd", "prompt_tokens",
               "completion_tokens", "tokens", "calls", "latency_s", "truncated", "wall_s", "on_front")


def write_csv(rows: Sequence[MethodRow], path: str | os.PathLike[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      data = row.to_json()
      writer.writerow({k: data[k] for k in _CSV_FIELDS})


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg", force=True)  # files only; works with no display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_pareto(rows: Sequence[MethodRow], path: str | os.PathLike[str], *, highlight: Sequence[str] = ("hieramas",),
                title: str = "Accuracy against cost") -> None:
  """Scatter of accuracy vs mean cost per query (log scale), the Pareto front as a step line."""
  plt = _pyplot()
  points = [r for r in rows if not math.isnan(r.accuracy)]
  fig, ax = plt.subplots(figsize=(8.5, 6))
  for r in points:
    special = r.method in highlight
    ax.scatter(r.cost_usd, r.accuracy, s=160 if special else 40, marker="*" if special else "o",
               color="tab:red" if special else ("tab:blue" if r.on_front else "tab:gray"), zorder=3,
               edgecolors="black" if special else "none")
    ax.annotate(r.method, (r.cost_usd, r.accuracy), textcoords="offset points", xytext=(5, 4), fontsize=7,
                fontweight="bold" if special else "normal")
  front = sorted((r for r in points if r.on_front), key=lambda r: r.cost_usd)
  if front:
    xs, ys = [front[0].cost_usd], [front[0].accuracy]
    for r in front[1:]:
      xs += [r.cost_usd, r.cost_usd]
      ys += [ys[-1], r.accuracy]
    ax.plot(xs, ys, color="tab:blue", linewidth=1.2, linestyle="--", label="Pareto front", zorder=2)
    ax.legend(loc="lower right", fontsize=8)
  if points and min(r.cost_usd for r in points) > 0:
    ax.set_xscale("log")
  ax.set_xlabel("mean cost per query (USD)")
  ax.set_ylabel("accuracy")
  ax.set_title(title)
  ax.grid(True, alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


@dataclasses.dataclass(frozen=True)
class TopologyView:
  """What HieraMAS chose for one query, for the topology picture.

  Attributes:
    question: the query text (shortened in the picture).
    roles: role names (adjacency order).
    assignment: [R][P+1] model names or None (skip); the synthesizer last.
    adjacency: [R, R] 0/1; ``adjacency[i][j] = 1``: role i feeds role j.
    decision_model: model of the decision node.
    score: the graph classifier's score of the chosen DAG (None if unknown).
    solved: whether the final answer was right (None if unknown or failed).
  """

  question: str
  roles: Sequence[str]
  assignment: Sequence[Sequence[str | None]]
  adjacency: Any
  decision_model: str
  score: float | None = None
  solved: bool | None = None


def _draw_topology(ax, view: TopologyView) -> None:
  adj = np.asarray(view.adjacency).astype(int)
  n = len(view.roles)
  layers = graphs.topological_layers(adj)  # columns of the picture; raises InvalidGraphError on a cycle
  pos: dict[int, tuple[float, float]] = {}
  for x, layer in enumerate(layers):
    for k, r in enumerate(layer):
      pos[r] = (float(x), (len(layer) - 1) / 2.0 - k)
  decision_pos = (float(len(layers)), 0.0)
  live = [len(row) > 0 and row[-1] is not None for row in view.assignment]

  def box(r: int) -> str:
    row = list(view.assignment[r])
    proposers = ", ".join(m or "skip" for m in row[:-1]) or "none"
    if not live[r]:
      return f"{view.roles[r]}\n(dropped)"
    return f"{view.roles[r]}\nP: {proposers}\nS: {row[-1]}"

  layer_of = {r: x for x, layer in enumerate(layers) for r in layer}
  boxes = {}
  for r in range(n):
    boxes[r] = ax.text(*pos[r], box(r), ha="center", va="center", fontsize=6.5, zorder=3,
                       bbox=dict(boxstyle="round,pad=0.4", facecolor="#dbe9f6" if live[r] else "#eeeeee",
                                 edgecolor="black" if live[r] else "gray", linestyle="-" if live[r] else "--"))
  decision = ax.text(*decision_pos, f"Decision\n{view.decision_model}", ha="center", va="center", fontsize=6.5,
                     zorder=3, bbox=dict(boxstyle="round,pad=0.4", facecolor="#e3f4e1", edgecolor="tab:green"))
  # Arrows are anchored to the boxes (fractions of each text box), so heads end at the box edges.
  for i in range(n):
    for j in range(n):
      if adj[i, j]:
        # Edges that skip layers bend more, so they pass around the roles in between.
        span = abs(layer_of[j] - layer_of[i])
        ax.annotate("", xy=(0.0, 0.5), xycoords=boxes[j], xytext=(1.0, 0.5), textcoords=boxes[i],
                    arrowprops=dict(arrowstyle="-|>", color="black" if live[i] and live[j] else "lightgray",
                                    shrinkA=3, shrinkB=3, connectionstyle=f"arc3,rad={-0.3 * (span - 1)}",
                                    lw=1.2), zorder=2)
  for r in range(n):
    if live[r]:
      ax.annotate("", xy=(0.5, 0.0), xycoords=decision, xytext=(0.5, 0.0), textcoords=boxes[r],
                  arrowprops=dict(arrowstyle="-|>", color="tab:green", alpha=0.6, linestyle="dashed",
                                  shrinkA=2, shrinkB=2, connectionstyle="arc3,rad=0.25", lw=0.9), zorder=1)
  ys = [p[1] for p in pos.values()] + [0.0]
  ax.set_xlim(-0.6, len(layers) + 0.6)
  ax.set_ylim(min(ys) - 1.0, max(ys) + 1.0)
  ax.axis("off")
  status = {True: "solved", False: "wrong", None: ""}[view.solved]
  score = "" if view.score is None else f"score {view.score:.3f}"
  # "$" would start matplotlib's mathtext (and fail when unbalanced): show it as it is.
  question = textwrap.shorten(" ".join(view.question.split()), width=90, placeholder=" ...").replace("$", r"\$")
  ax.set_title("\n".join(textwrap.wrap(question, 60)) + "\n" + "  ".join(s for s in (score, status) if s),
               fontsize=7.5)


def plot_topologies(views: Sequence[TopologyView], path: str | os.PathLike[str], *,
                    title: str = "HieraMAS: chosen models and DAG per query") -> None:
  """One panel per query: roles as nodes (P: proposers, S: synthesizer), arrows i -> j where adj[i, j] = 1."""
  plt = _pyplot()
  count = max(1, len(views))
  cols = min(2, count)
  rows = math.ceil(count / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 3.4 * rows), squeeze=False)
  for k, ax in enumerate(axes.flat):
    if k < len(views):
      _draw_topology(ax, views[k])
    else:
      ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


# ---------------------------------------------------------------------------
# All files
# ---------------------------------------------------------------------------


def write_report(out: str | os.PathLike[str], rows: Sequence[MethodRow], views: Sequence[TopologyView], *,
                 highlight: Sequence[str] = ("hieramas",), extra: dict[str, Any] | None = None,
                 title: str = "Accuracy against cost") -> dict[str, str]:
  """Marks the Pareto front and writes table.md, table.csv, results.json, pareto.png, topologies.png.

  Raises graphs.InvalidGraphError, naming the view, before writing anything when a
  view's adjacency is not a DAG over its roles.
  """
  for k, view in enumerate(views):  # before any file is written: a bad graph would fail the picture last
    try:
      graphs.validate_adjacency(view.adjacency, len(view.roles))
    except graphs.InvalidGraphError as e:
      raise graphs.InvalidGraphError(f"topology view {k}: {e}") from None
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  mark_front(rows)
  paths = {name: str(out / name) for name in ("table.md", "table.csv", "results.json", "pareto.png",
                                               "topologies.png")}
  (out / "table.md").write_text(markdown_table(rows, highlight), encoding="utf-8")
  write_csv(rows, out / "table.csv")
  plot_pareto(rows, out / "pareto.png", highlight=highlight, title=title)
  plot_topologies(views, out / "topologies.png")
  results = {"rows": [r.to_json() for r in rows],
             "pareto_front": [r.method for r in rows if r.on_front],
             "topologies": [_view_json(v) for v in views], **(extra or {})}
  (out / "results.json").write_text(strict_json(results), encoding="utf-8")
  return paths


def _view_json(view: TopologyView) -> dict[str, Any]:
  data = dataclasses.asdict(view)
  data["adjacency"] = np.asarray(view.adjacency).astype(int).tolist()
  data["roles"] = list(view.roles)
  data["assignment"] = [list(row) for row in view.assignment]
  return data



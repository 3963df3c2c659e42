"""The host side imports without JAX: the dependency rule of BUILD.md, checked.

Each module is imported in a fresh interpreter whose import system refuses JAX
and its libraries (a meta-path finder that raises). A module that pulls one in
fails the test with the chain of module-level imports that led there.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]

# Modules that run on the host (LLM calls, prompts, grading, execution, reports): no JAX.
HOST_MODULES = (
    "hieramas_jax",
    "hieramas_jax.graphs",
    "hieramas_jax.executor",
    "hieramas_jax.results",
    "hieramas_jax.sqlite_store",
    "hieramas_jax.jsonio",
    "hieramas_jax.distributed",
    "hieramas_jax.config",
    "hieramas_jax.presets",
    "hieramas_jax.paths",
    "hieramas_jax.report",
    "hieramas_jax.baselines",
    "hieramas_jax.encoders",
    "hieramas_jax.encoders.cache",
    "hieramas_jax.encoders.hashing",
    "hieramas_jax.encoders.openai_embeddings",
    "hieramas_jax.sandbox",
    "hieramas_jax.train",
    "hieramas_jax.train.environment",
    "hieramas_jax.train.metric_writer",
    "hieramas_jax.train.metrics",
    "hieramas_jax.train.preemption",
)
# Packages whose every module is host-side (submodules found by walking them, so new ones are covered).
HOST_PACKAGES = ("hieramas_jax.llm", "hieramas_jax.tasks", "hieramas_jax.baselines")
BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "jraph")

# Runs in the child: installs the blocker, imports each module, prints one JSON object of failures.
_CHILD = r"""
import importlib, json, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))


def import_chain():
  # Module-level frames on the stack, outermost first: who imported whom.
  chain, frame = [], sys._getframe()
  while frame is not None:
    name = frame.f_globals.get("__name__", "")
    if frame.f_code.co_name == "<module>" and name.startswith("hieramas_jax"):
      chain.append(f"{name}:{frame.f_lineno}")
    frame = frame.f_back
  return chain[::-1]


class RefuseJax:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError("host module imported " + name + " via " + " -> ".join(import_chain() or ["(top level)"]))
    return None


sys.meta_path.insert(0, RefuseJax())
modules = [m for m in sys.argv[2].split(",") if m]
for package in [p for p in sys.argv[3].split(",") if p]:
  try:
    found = importlib.import_module(package)
  except ImportError:
    continue  # reported below, when the package itself is imported
  if hasattr(found, "__path__"):
    modules += [info.name for info in pkgutil.walk_packages(found.__path__, package + ".")]
failures = {}
for name in dict.fromkeys(modules):
  try:
    importlib.import_module(name)
  except ImportError as error:
    failures[name] = str(error)
print(json.dumps({"checked": list(dict.fromkeys(modules)), "failures": failures,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def _import_without_jax(modules, packages=()):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
      [sys.executable, "-c", _CHILD, ",".join(BLOCKED), ",".join(modules), ",".join(packages)],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_host_modules_import_without_jax():
  result = _import_without_jax(HOST_MODULES, HOST_PACKAGES)
  lines = [f"{name}: {why}" for name, why in result["failures"].items()]
  assert not lines, ("host modules must not import JAX (BUILD.md, dependency rule); import it lazily inside the "
                     "function that needs it:\n" + "\n".join(lines))
  assert not result["loaded"]
  # The walk reached the packages' modules (a walk that found nothing would prove nothing).
  assert {"hieramas_jax.llm.openai_backend", "hieramas_jax.llm.cache", "hieramas_jax.tasks.math"} <= set(
      result["checked"])


def test_the_check_catches_a_jax_import_and_names_the_chain():
  result = _import_without_jax(["hieramas_jax.train.evaluation"])
  why = result["failures"]["hieramas_jax.train.evaluation"]
  assert why.startswith("host module imported jax via hieramas_jax.train.evaluation:"), why


def test_train_package_loads_the_jax_driver_on_first_use():
  from hieramas_jax import train  # pylint: disable=g-import-not-at-top
  from hieramas_jax.train import driver  # pylint: disable=g-import-not-at-top
  assert train.train_and_evaluate is driver.train_and_evaluate
  with pytest.raises(AttributeError, match="hieramas_jax.train' has no attribute 'no_such_thing'"):
    train.no_such_thing  # pylint: disable=pointless-statement

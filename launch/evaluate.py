"""Evaluates a trained HieraMAS run against baselines on a held-out split (library: hieramas_jax.evaluation).

  python -m launch.evaluate --config=configs/math.py --workdir=runs/math
  python -m launch.evaluate --config=configs/math.py --workdir=runs/math --methods=hieramas,single,cot --limit=32

Writes to --out (default <workdir>/eval): table.md, table.csv, results.json,
pareto.png and topologies.png, and prints the Markdown table. Every endpoint of
the pool is called once before any work; a failure a user fixes (endpoint,
config, request, too many failed calls) prints one line on stderr naming the
cause and the fix, and exits with status 1. The methods and their flags come
from the registry, hieramas_jax.baselines.METHODS (see --methods).

On several hosts (launch.multihost's flags, or a cluster JAX detects) start the
same command once per host: each process calls its own endpoints for its share
of every method's queries, and process 0 alone prints and writes the report.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hieramas_jax import baselines, evaluation
from hieramas_jax import config as config_lib
from launch import multihost

config_flags.DEFINE_config_file("config", None, "Configuration file of the run (configs/*.py[:args]); its task, "
                                "sizes and seed define the split, its llm section the backend, its inference "
                                "section the selector's inference rules.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run: checkpoints and caches.")
_OUT = flags.DEFINE_string("out", "", "Where the report goes (default <workdir>/eval).")
_METHODS = flags.DEFINE_string("methods", "all", "Comma list of methods or 'all':\n" + baselines.METHODS.help())
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate on: train, val or test.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate the first N problems of the split only (0: all).")
_TOPOLOGY_QUERIES = flags.DEFINE_integer("topology_queries", 4, "Queries drawn in topologies.png.")
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
for _flag in baselines.METHODS.flags():  # each method's options (shared ones once)
  _DEFINE[type(_flag.default)](_flag.name, _flag.default, _flag.help)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  multihost.join("launch.evaluate")  # before anything touches a JAX device
  flag_values = {f.name: flags.FLAGS[f.name].value for f in baselines.METHODS.flags()}
  evaluation.command_line("launch.evaluate", flags.FLAGS.config, _WORKDIR.value, _OUT.value or None,
                          methods=_METHODS.value, split=_SPLIT.value, limit=_LIMIT.value, flag_values=flag_values,
                          topology_queries=_TOPOLOGY_QUERIES.value)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)  # a bad --config: one line, exit 1

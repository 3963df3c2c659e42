"""A multi-host program for tests/test_score_graphs_multihost.py: several launch.score_graphs runs in one join.

``--cases`` names a JSON file with a list of ``score_files`` keyword arguments (workdir, out, queries,
embeddings, graphs_path, batch_size); every process runs each case in order and prints one JSON line:
its process index and, per case, the error line it raised (null when the case succeeded).
"""

import json
import pathlib

from absl import app
from absl import flags
from absl import logging

from launch import multihost
from launch import score_graphs

from hieramas_jax import distributed

_CASES = flags.DEFINE_string("cases", None, "JSON file: a list of score_files keyword arguments.")


def main(argv):
  del argv
  # As launch.score_graphs does: orbax logs every restore at INFO, and a full stderr pipe would stall a process.
  logging.set_verbosity(logging.WARNING)
  multihost.join("score_graphs_cases")
  errors = []
  for case in json.loads(pathlib.Path(_CASES.value).read_text()):
    try:
      score_graphs.score_files(**case)
      errors.append(None)
    except (FileNotFoundError, ValueError) as e:  # what launch.score_graphs prints as its error line
      errors.append(f"{type(e).__name__}: {e}")
  print(json.dumps({"process": distributed.process_index(), "errors": errors}))
  distributed.finish()


if __name__ == "__main__":
  app.run(main)

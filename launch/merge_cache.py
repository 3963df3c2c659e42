"""Merges the per-process response caches of a multi-process run into the shared one, by hand.

  python -m launch.merge_cache --workdir=runs/math
  python -m launch.merge_cache --cache=runs/math/llm_cache.sqlite

Every ``llm_cache.process-<i>-of-<n>.sqlite`` beside the shared file is copied
into it (each run also does this when it starts). Idempotent: a response already
there is counted as a duplicate; one whose answer differs is counted as a
conflict and the earlier answer is kept. Prints the rows of each file and what
was merged. Run it while no run uses the workdir.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app
from absl import flags

from hieramas_jax.llm import cache as llm_cache

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir: merges into <workdir>/llm_cache.sqlite.")
_CACHE = flags.DEFINE_string("cache", None, "The shared response cache file to merge into (instead of --workdir).")


def target_path(workdir: str | None, cache: str | None) -> pathlib.Path:
  """The shared cache file the flags name; ValueError naming the flag when they name none or a missing one."""
  if (workdir is None) == (cache is None):
    raise ValueError("give exactly one of --workdir and --cache")
  if workdir is not None:
    if not os.path.isdir(workdir):
      raise ValueError(f"--workdir={workdir}: no such directory")
    target = pathlib.Path(workdir) / "llm_cache.sqlite"
  else:
    target = pathlib.Path(cache)
  if not target.is_file() and not llm_cache.process_files(target):
    raise ValueError(f"{target}: no response cache there and no per-process files beside it "
                     f"({target.stem}.process-<i>-of-<n>{target.suffix}); check the path")
  return target


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    report = llm_cache.merge_files(target_path(_WORKDIR.value, _CACHE.value))
  except (ValueError, llm_cache.CacheError) as e:
    sys.exit(f"merge_cache: error: {' '.join(str(e).split())}")
  for line in report.lines():
    print(line)


if __name__ == "__main__":
  app.run(main)

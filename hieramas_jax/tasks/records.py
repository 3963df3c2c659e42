"""JSONL(.gz) benchmark files read record by record, with errors that name the file and line."""

from __future__ import annotations

import gzip
import json
import pathlib
import zlib
from typing import Any, Callable, Iterator


def jsonl_records(path: pathlib.Path, not_a_record: Callable[[Any], str | None]) -> Iterator[tuple[int, Any]]:
  """(1-based line number, record) of each non-blank line of a .jsonl or .jsonl.gz file.

  ``not_a_record(record)`` returns None for a good record, else what the line should have been (e.g.
  "a MATH record (...)"); a bad line, invalid JSON or a cut/corrupt gzip raises one ValueError that names
  the file, the line and the fix.
  """
  opener = gzip.open if path.suffix == ".gz" else open
  line_number = 0
  try:
    with opener(path, "rb") as f:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError included
          raise ValueError(f"{path} line {line_number} is not valid JSON ({e}); fix or delete that line") from None
        problem = not_a_record(record)
        if problem:
          raise ValueError(f"{path} line {line_number} is not {problem}; fix or delete that line")
        yield line_number, record
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # not gzip, cut short, corrupt
    raise ValueError(f"{path} cannot be read after line {line_number} ({type(e).__name__}: {e}); it is not a "
                     "complete gzip/JSONL file: download it again") from None

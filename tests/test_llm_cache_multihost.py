"""The response cache under several processes: one file per process, the merge, lookups, restarts."""

import asyncio
import json
import logging
import os
import pathlib
import subprocess
import sys

import pytest

import multihost
from hieramas_jax.llm import cache as llm_cache
from hieramas_jax.llm.base import Response, Usage
from hieramas_jax.llm.cache import CacheError, CachedBackend, ResponseCache

PROGRAM = "tests/multihost_programs/llm_cache.py"


def response(text: str) -> Response:
  return Response(model="m", text=text, usage=Usage(1, 2), cost=0.25, latency=0.5)


def fill(path: pathlib.Path, rows: dict[str, str]) -> None:
  cache = ResponseCache(path)
  for key, text in rows.items():
    cache.put(key, response(text))
  cache.close()


def texts(path: pathlib.Path) -> dict[str, str]:
  cache = ResponseCache(path, read_only=True)
  try:
    return {key: json.loads(payload)["text"] for _, key, _, payload, _ in cache.rows_after(0, 10_000)}
  finally:
    cache.close()


class CountingBackend:
  def __init__(self):
    self.calls = 0

  def known_models(self):
    return {"m"}

  async def complete(self, model, messages, *, sample_index=0, **params):
    del messages, params
    self.calls += 1
    return Response(model=model, text=f"fresh {self.calls} #{sample_index}", usage=Usage(1, 1), cost=0.5)


def ask(backend, sample_indices):
  async def run():
    return [await backend.complete("m", [{"role": "user", "content": "q"}], sample_index=i) for i in sample_indices]
  return asyncio.run(run())


def test_per_process_files_are_named_beside_the_shared_one_and_found_in_order(tmp_path):
  shared = tmp_path / "llm_cache.sqlite"
  assert llm_cache.process_file(shared, 1, 2) == tmp_path / "llm_cache.process-1-of-2.sqlite"
  for name in ("llm_cache.process-0-of-3.sqlite", "llm_cache.process-1-of-2.sqlite", "llm_cache.process-0-of-2.sqlite",
               "llm_cache.process-0-of-2.sqlite-wal", "other.process-0-of-2.sqlite", "llm_cache.process-x-of-2.sqlite"):
    (tmp_path / name).write_bytes(b"")
  assert [f.name for f in llm_cache.process_files(shared)] == [
      "llm_cache.process-0-of-2.sqlite", "llm_cache.process-1-of-2.sqlite", "llm_cache.process-0-of-3.sqlite"]


def test_merge_counts_rows_duplicates_and_conflicts_keeps_the_first_and_is_idempotent(tmp_path, caplog):
  shared = tmp_path / "llm_cache.sqlite"
  fill(shared, {"k0": "a"})
  fill(llm_cache.process_file(shared, 0, 2), {"k0": "a", "k1": "b"})
  fill(llm_cache.process_file(shared, 1, 2), {"k1": "b from process 1", "k2": "c"})
  sources_before = [texts(f) for f in llm_cache.process_files(shared)]
  with caplog.at_level(logging.WARNING):
    report = llm_cache.merge_files(shared)
  assert (report.rows_before, report.rows_after) == (1, 3)
  assert [(f.rows, f.added, f.duplicates, f.conflicts) for f in report.files] == [(2, 1, 1, 0), (2, 1, 0, 1)]
  assert texts(shared) == {"k0": "a", "k1": "b", "k2": "c"}  # process 0's answer came first
  assert "differ from the ones already merged" in caplog.text
  assert "3 rows; 2 merged, 1 duplicates, 1 conflicting from 2 files" in report.lines()[-1]
  assert [texts(f) for f in llm_cache.process_files(shared)] == sources_before  # sources only read
  again = llm_cache.merge_files(shared)
  assert (again.rows_before, again.rows_after, again.added, again.duplicates, again.conflicts) == (3, 3, 0, 3, 1)
  assert texts(shared) == {"k0": "a", "k1": "b", "k2": "c"}


def test_merge_skips_a_file_of_another_key_format_and_names_a_corrupt_one(tmp_path):
  shared = tmp_path / "llm_cache.sqlite"
  old = llm_cache.process_file(shared, 0, 2)
  fill(old, {"k": "old"})
  db = __import__("sqlite3").connect(old)
  db.execute("UPDATE meta SET value = '1' WHERE name = 'key_format'")
  db.commit()
  db.close()
  report = llm_cache.merge_files(shared)
  assert report.files[0].skipped and "key format 1" in report.files[0].skipped and report.rows_after == 0
  llm_cache.process_file(shared, 1, 2).write_bytes(b"not a database at all" * 100)
  with pytest.raises(CacheError, match=r"llm_cache\.process-1-of-2\.sqlite: cannot open it .*delete it or move it"):
    llm_cache.merge_files(shared)


def test_process_cache_reads_its_own_file_first_then_the_shared_one_and_writes_only_its_own(tmp_path):
  shared, own = tmp_path / "llm_cache.sqlite", tmp_path / "llm_cache.process-1-of-2.sqlite"
  fill(shared, {"both": "shared answer", "shared only": "s"})
  fill(own, {"both": "own answer"})
  cache = llm_cache.ProcessCache(ResponseCache(own), ResponseCache(shared, read_only=True))
  assert cache.get("both").text == "own answer" and cache.get("shared only").text == "s"
  assert cache.get("shared only").cached and cache.get("nowhere") is None
  cache.put("new", response("n"))
  assert len(cache) == 4
  with pytest.raises(CacheError, match="open read-only"):
    cache.shared.put("x", response("x"))
  cache.close()
  assert texts(own) == {"both": "own answer", "new": "n"}
  assert texts(shared) == {"both": "shared answer", "shared only": "s"}


def test_read_only_open_of_a_missing_file_or_another_database_says_so(tmp_path):
  with pytest.raises(CacheError, match="no such file"):
    ResponseCache(tmp_path / "absent.sqlite", read_only=True)
  other = tmp_path / "other.sqlite"
  db = __import__("sqlite3").connect(other)
  db.execute("CREATE TABLE t (x)")
  db.close()
  with pytest.raises(CacheError, match="not a response cache"):
    ResponseCache(other, read_only=True)


def test_one_process_after_a_multi_process_run_merges_first_and_pays_for_nothing_again(tmp_path):
  shared = tmp_path / "llm_cache.sqlite"
  first = CachedBackend(CountingBackend(), ResponseCache(llm_cache.process_file(shared, 0, 2)))
  second = CachedBackend(CountingBackend(), ResponseCache(llm_cache.process_file(shared, 1, 2)))
  paid = ask(first, [0, 1]) + ask(second, [2, 3])
  first.close()
  second.close()
  inner = CountingBackend()
  backend = CachedBackend(inner, shared)
  replayed = ask(backend, [0, 1, 2, 3])
  backend.close()
  assert inner.calls == 0 and [r.text for r in replayed] == [r.text for r in paid]
  assert all(r.cached for r in replayed)


def test_process_one_of_two_writes_its_own_file_and_finds_merged_answers(tmp_path, monkeypatch):
  shared = tmp_path / "llm_cache.sqlite"
  earlier = CachedBackend(CountingBackend(), shared)  # a one-process run paid for sample 0
  (paid,) = ask(earlier, [0])
  earlier.close()
  # Process 1 of 2 on its own: the collectives of a one-process interpreter hand back its own value.
  monkeypatch.setattr(llm_cache.distributed, "process_count", lambda: 2)
  monkeypatch.setattr(llm_cache.distributed, "process_index", lambda: 1)
  inner = CountingBackend()
  backend = CachedBackend(inner, shared)
  assert isinstance(backend.cache, llm_cache.ProcessCache)
  hit, new = ask(backend, [0, 1])
  backend.close()
  assert inner.calls == 1 and hit.text == paid.text and hit.cached and not new.cached
  assert list(texts(llm_cache.process_file(shared, 1, 2))) == [backend.key("m", [{"role": "user", "content": "q"}],
                                                                            {}, 1)]
  assert len(texts(shared)) == 1  # the shared file is only read during a multi-process run


def test_a_process_that_cannot_open_its_own_file_fails_with_the_reason(tmp_path, monkeypatch):
  shared = tmp_path / "llm_cache.sqlite"
  monkeypatch.setattr(llm_cache.distributed, "process_count", lambda: 2)
  monkeypatch.setattr(llm_cache.distributed, "process_index", lambda: 1)
  llm_cache.process_file(shared, 1, 2).mkdir()  # a folder where its file should be
  with pytest.raises(CacheError, match=r"process-1-of-2\.sqlite: cannot open it"):
    CachedBackend(CountingBackend(), shared)


def merge_tool(*args):
  return subprocess.run([sys.executable, "-m", "launch.merge_cache", *args], cwd=multihost.REPO,
                        env=multihost.process_env(1), capture_output=True, text=True, timeout=120, check=False)


def test_merge_tool_prints_counts_and_one_line_errors(tmp_path):
  shared = tmp_path / "llm_cache.sqlite"
  fill(llm_cache.process_file(shared, 0, 2), {"a": "1", "b": "2"})
  fill(llm_cache.process_file(shared, 1, 2), {"b": "2", "c": "3"})
  done = merge_tool(f"--workdir={tmp_path}")
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[0].endswith("llm_cache.process-0-of-2.sqlite: 2 rows, 2 merged, 0 duplicates, 0 conflicting "
                           "(kept the earlier answer)")
  assert "0 -> 3 rows; 3 merged, 1 duplicates, 0 conflicting from 2 files" in lines[-1]
  missing = merge_tool(f"--cache={tmp_path / 'nowhere' / 'llm_cache.sqlite'}")
  assert missing.returncode == 1 and "no response cache there" in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1
  llm_cache.process_file(shared, 2, 3).write_bytes(b"garbage" * 200)
  corrupt = merge_tool(f"--cache={shared}")
  assert corrupt.returncode == 1 and len(corrupt.stderr.strip().splitlines()) == 1
  assert "process-2-of-3.sqlite: cannot open it" in corrupt.stderr and "delete it or move it away" in corrupt.stderr


def run_program(workdir, processes, requests=6):
  argv = [PROGRAM, f"--workdir={workdir}", f"--requests={requests}"]
  if processes == 1:
    finished = [multihost.run_single(argv, timeout_s=120)]
  else:
    finished = multihost.run_processes(argv, n=processes, timeout_s=120)
  for f in finished:
    assert f.returncode == 0, f.stderr[-3000:]
  return json.loads(finished[0].stdout.strip().splitlines()[-1])


def test_two_processes_then_one_replays_every_paid_call(tmp_path):
  two = run_program(tmp_path, 2)
  assert two["count"] == 2 and two["calls"] == [3, 3] and not any(two["hits"])
  assert sorted(p.name for p in llm_cache.process_files(tmp_path / "llm_cache.sqlite")) == [
      "llm_cache.process-0-of-2.sqlite", "llm_cache.process-1-of-2.sqlite"]
  one = run_program(tmp_path, 1)
  assert one["calls"] == [0] and all(one["hits"]) and one["texts"] == two["texts"]


@pytest.mark.slow
def test_one_process_then_two_then_two_again_with_more_requests(tmp_path):
  one = run_program(tmp_path, 1)
  assert one["calls"] == [6]
  two = run_program(tmp_path, 2)
  assert two["calls"] == [0, 0] and all(two["hits"]) and two["texts"] == one["texts"]
  more = run_program(tmp_path, 2, requests=10)  # the shares move; only the 4 new requests are paid for
  assert sum(more["calls"]) == 4 and more["texts"][:6] == one["texts"] and more["hits"] == [True] * 6 + [False] * 4
  again = run_program(tmp_path, 2, requests=10)
  assert again["calls"] == [0, 0] and again["texts"] == more["texts"]
  assert os.path.getsize(tmp_path / "llm_cache.sqlite") > 0

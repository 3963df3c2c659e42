"""Shared pytest fixtures."""

import pathlib

import pytest

from hieramas_jax import paths


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The ../shared/data folder; tests that need it skip cleanly without it."""
  root = paths.default_data_dir()
  if root is None or not root.is_dir():
    pytest.skip("needs the benchmark files of ../shared/data (or HIERAMAS_DATA); absent here")
  return root

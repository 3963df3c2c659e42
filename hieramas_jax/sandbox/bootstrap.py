"""The source a sandboxed interpreter runs: this package's stdlib-only modules, installed as one package.

The sandboxed processes run in a root (namespaces mode) or under Landlock rules
that hide the project, so the host sends them the code itself:
``python -I -B -c <child_source()> <role>``. The loader installs the modules of
``CHILD_MODULES`` as the package ``CHILD_PACKAGE`` (their relative imports work
as they do in the host's import of ``hieramas_jax.sandbox``) and calls
``harness.main``.
"""

from __future__ import annotations

import functools
import pathlib

CHILD_PACKAGE = "hieramas_sandbox_child"
# Stdlib-only modules, in the order they import each other.
CHILD_MODULES = ("codec", "confinement", "channel", "driver", "harness")
_MAX_ARGUMENT_BYTES = 120_000  # Linux refuses one argv string over 128 KiB (MAX_ARG_STRLEN)

_LOADER = """\
import sys, types
def _install(package_name, sources):
  package = types.ModuleType(package_name)
  package.__path__ = []
  sys.modules[package_name] = package
  for name, source in sources:
    module = types.ModuleType(package_name + "." + name)
    module.__package__ = package_name
    sys.modules[module.__name__] = module
    exec(compile(source, "<sandbox %s.py>" % name, "exec", dont_inherit=True), module.__dict__)
    setattr(package, name, module)
  return package
_install({package!r}, {sources!r}).harness.main()
"""


@functools.lru_cache(maxsize=1)
def child_source() -> str:
  """Python source that installs the child modules and runs ``harness.main`` (role from argv)."""
  folder = pathlib.Path(__file__).parent
  sources = [(name, (folder / f"{name}.py").read_text(encoding="utf-8")) for name in CHILD_MODULES]
  source = _LOADER.format(package=CHILD_PACKAGE, sources=sources)
  if len(source.encode()) > _MAX_ARGUMENT_BYTES:
    raise RuntimeError(f"the sandbox's child modules ({', '.join(CHILD_MODULES)}) total {len(source.encode())} "
                       f"bytes, over the {_MAX_ARGUMENT_BYTES} one command-line argument may hold; shorten them")
  return source

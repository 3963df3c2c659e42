"""Module and function sizes in hieramas_jax/ stay within the limits of issue 16.

No module over ``MAX_MODULE_LINES`` lines, no function (method, nested function)
over ``MAX_FUNCTION_LINES`` lines from its ``def`` to its last line. Read with
``ast``, nothing imported, so the check is fast and JAX-free.
"""

import ast
import pathlib

_REPO = pathlib.Path(__file__).resolve().parents[1]
_PACKAGE = _REPO / "hieramas_jax"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
# The sandbox harness runs as shipped stdlib source inside the confined process, where one flat entry is
# easier to audit than helpers spread over modules; issue 16 exempts it from the function limit.
_FUNCTION_LIMIT_EXEMPT = frozenset({"hieramas_jax/sandbox/harness.py"})


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
  """``(qualified name, first line, length)`` of every function in ``source`` longer than ``limit`` lines."""
  found = []

  def visit(node: ast.AST, prefix: str) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        name = f"{prefix}{child.name}"
        if not isinstance(child, ast.ClassDef):
          length = child.end_lineno - child.lineno + 1
          if length > limit:
            found.append((name, child.lineno, length))
        visit(child, name + ".")
      else:
        visit(child, prefix)

  visit(ast.parse(source), "")
  return found


def _modules() -> list[tuple[str, str]]:
  """``(path relative to the repository, source)`` of every module of the package."""
  paths = sorted(_PACKAGE.rglob("*.py"))
  assert len(paths) > 50, f"found only {len(paths)} modules under {_PACKAGE}; is the package there?"
  return [(path.relative_to(_REPO).as_posix(), path.read_text(encoding="utf-8")) for path in paths]


def test_no_module_is_over_the_line_limit():
  offenders = [f"{path}: {len(source.splitlines())} lines" for path, source in _modules()
               if len(source.splitlines()) > MAX_MODULE_LINES]
  assert not offenders, (f"modules over {MAX_MODULE_LINES} lines (split each by concern into modules of the same "
                         "package, keeping old import paths working):\n" + "\n".join(offenders))


def test_no_function_is_over_the_line_limit():
  offenders = [f"{path}:{line} {name}: {length} lines" for path, source in _modules()
               if path not in _FUNCTION_LIMIT_EXEMPT for name, line, length in long_functions(source)]
  assert not offenders, (f"functions over {MAX_FUNCTION_LINES} lines (extract helpers whose names say what they "
                         "do):\n" + "\n".join(offenders))


def test_the_function_check_finds_long_methods_and_nested_functions_and_nothing_else():
  def body(lines, indent):
    return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(lines))

  source = ("def at_the_limit():\n" + body(MAX_FUNCTION_LINES - 1, 2) +
            "class Thing:\n  def method(self):\n" + body(MAX_FUNCTION_LINES, 4) +
            "def outer():\n  async def inner():\n" + body(MAX_FUNCTION_LINES, 4))
  found = {name: length for name, _, length in long_functions(source)}
  assert found == {"Thing.method": MAX_FUNCTION_LINES + 1, "outer": MAX_FUNCTION_LINES + 2,
                   "outer.inner": MAX_FUNCTION_LINES + 1}, found

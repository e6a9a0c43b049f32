"""The package layout: no import cycles, no module importing another's private names, a Flax-free core."""

import ast
import pathlib

from paths import REPO

PACKAGES = ("deqjax", "experiments")


def modules() -> dict[str, pathlib.Path]:
  root = pathlib.Path(REPO)
  found = {}
  for package in PACKAGES:
    for path in (root / package).rglob("*.py"):
      name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
      found[name] = path
  return found


def imports(path: pathlib.Path, name: str, known: dict) -> list[tuple[str, str | None]]:
  """(module imported, name imported from it or None) of every import in `path` (module level or not)."""
  is_package = path.name == "__init__.py"
  out = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      out += [(alias.name, None) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative
        parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([base] if base else []))
      for alias in node.names:
        submodule = f"{base}.{alias.name}"
        out.append((submodule, None) if submodule in known else (base, alias.name))
  return [(module, imported) for module, imported in out if module.split(".")[0] in PACKAGES]


def test_the_import_graph_has_no_cycles_and_no_private_imports():
  known = modules()
  graph = {}
  private = []
  for name, path in known.items():
    edges = set()
    for module, imported in imports(path, name, known):
      while module not in known and "." in module:  # an attribute path: the module that defines it
        module = module.rsplit(".", 1)[0]
      if module != name:
        edges.add(module)
      if imported and imported.startswith("_") and module != name and not module.startswith(name.split(".")[0] + "._"):
        private.append(f"{name} imports {module}.{imported}")
    graph[name] = edges
  assert private == []
  # Package __init__ modules re-export their children: a child importing its package's public
  # names is an edge to the package, whose own edges point back down; ignore package -> child edges.
  edges = {name: {m for m in targets if not m.startswith(name + ".")} for name, targets in graph.items()}
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(edges.get(node, ())):
      if state.get(target) == "open":
        cycles.append(stack[stack.index(target) :] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node)
  assert cycles == []


def test_the_core_imports_only_jax_and_numpy():
  third_party = set()
  for path in pathlib.Path(REPO, "deqjax").glob("*.py"):  # the core: deqjax/*.py, not nn/, models/, data/
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
      names += [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
      third_party |= {n.split(".")[0] for n in names}
  stdlib = {"__future__", "collections", "dataclasses", "enum", "functools", "math", "typing"}
  assert third_party - stdlib == {"deqjax", "jax", "numpy"}

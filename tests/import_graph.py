r"""The import graph of ``lmr_jax``: every import, at module level or inside a function, read from the
source (nothing is imported). Checks that it has no cycle, between modules or between packages, and
no upward arrow in the layer order below; prints the package-level arrows.

  python tests/import_graph.py            # arrows and any violation; exit status 1 on a violation
"""

from __future__ import annotations

import ast
import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "lmr_jax"
# Lowest first; an import may point within its own layer (acyclically) or to a lower one.
LAYERS = (
    ("lmr_jax.errors", "lmr_jax.config_keys", "lmr_jax.fileio", "lmr_jax.cli"),
    ("lmr_jax.model", "lmr_jax.losses", "lmr_jax.data"),
    ("lmr_jax.training",),
    ("lmr_jax.evaluation", "lmr_jax.inference"),
    ("lmr_jax.visualization",),
    ("lmr_jax.commands", "lmr_jax.benchmark", "lmr_jax.port", "lmr_jax.demo"),
)


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The ``lmr_jax`` modules that ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in modules else node.module)
  return found


def module_graph() -> dict[str, set[str]]:
  paths = sorted((ROOT / PACKAGE).rglob("*.py"))
  modules = {module_name(p) for p in paths}
  return {module_name(p): imports_of(p, modules) - {module_name(p)} for p in paths}


def package_of(module: str) -> str:
  """The unit the layers name: ``lmr_jax.data.features`` -> ``lmr_jax.data``."""
  return ".".join(module.split(".")[:2])


def layer_of(unit: str) -> int | None:
  for i, layer in enumerate(LAYERS):
    if unit in layer:
      return i
  return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as a path that ends where it starts, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def violations(graph: dict[str, set[str]]) -> list[str]:
  problems = []
  cycle = find_cycle(graph)
  if cycle:
    problems.append("module cycle: " + " -> ".join(cycle))
  packages = collections.defaultdict(set)
  for module, targets in graph.items():
    for target in targets:
      if package_of(target) != package_of(module) and package_of(module) != PACKAGE:
        packages[package_of(module)].add(package_of(target))
  cycle = find_cycle(packages)
  if cycle:
    problems.append("package cycle: " + " -> ".join(cycle))
  for module, targets in sorted(graph.items()):
    if module == PACKAGE:
      continue
    if layer_of(package_of(module)) is None:
      problems.append(f"{module}: its package is in no layer of tests/import_graph.py")
      continue
    for target in sorted(targets):
      if target != PACKAGE and layer_of(package_of(target)) > layer_of(package_of(module)):
        problems.append(f"upward arrow: {module} -> {target}")
  return problems


def package_arrows(graph: dict[str, set[str]]) -> list[str]:
  arrows = collections.defaultdict(set)
  for module, targets in graph.items():
    for target in targets:
      if package_of(target) != package_of(module):
        arrows[package_of(module)].add(package_of(target))
  return [
      f"{p} -> {', '.join(sorted(t))}"
      for p, t in sorted(arrows.items(), key=lambda x: layer_of(x[0]) or 0)
  ]


def main() -> int:
  graph = module_graph()
  print("\n".join(package_arrows(graph)))
  problems = violations(graph)
  print("\n".join(problems) if problems else f"{len(graph)} modules: no cycle, no upward arrow")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())

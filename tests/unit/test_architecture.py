"""The house rules of docs/architecture.md, enforced: what may import what, and how big a module gets.

Imports are read from the source (every ``import`` statement, at module level or inside functions),
and followed through the package, so a rule holds for everything a module pulls in, not only for
the lines it wrote itself.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_nanobanana"
NAME = "airflow_provider_nanobanana"
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@cache
def direct_imports(module: str, at_import: bool = False) -> frozenset[str]:
    """Absolute names ``module`` imports (package names resolved to the module holding them).

    Imports under ``if TYPE_CHECKING`` never run and are left out. With ``at_import``, only what
    runs when the module is imported counts (not imports inside functions, which run on call).
    """
    names: set[str] = set()
    for node in _executed(ast.parse(MODULES[module].read_text()).body, at_import):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(_owner(n) if n.startswith(NAME) else n for n in names)


def _executed(body: list[ast.stmt], at_import: bool) -> list[ast.AST]:
    found: list[ast.AST] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found += _executed(node.orelse, at_import)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and at_import:
            if isinstance(node, ast.ClassDef):
                found += _executed(node.body, at_import)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        else:
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
            found += _executed(children, at_import)
    return found


def _owner(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


@cache
def reachable(module: str, at_import: bool = False) -> frozenset[str]:
    """Everything ``module`` imports, following the package's own modules transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in direct_imports(todo.pop(), at_import):
            if name not in seen:
                seen.add(name)
                if name in MODULES:
                    todo.append(name)
    return frozenset(seen)


def under(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if m == f"{NAME}.{prefix}" or m.startswith(f"{NAME}.{prefix}."))


def hits(module: str, forbidden: tuple[str, ...], at_import: bool = False) -> list[str]:
    found = reachable(module, at_import)
    return sorted(n for n in found if any(n == f or n.startswith(f + ".") for f in forbidden))


OPERATORS = (f"{NAME}.operators", f"{NAME}.sensors", f"{NAME}.batch.operator")
TRIGGERS = (f"{NAME}.triggers", f"{NAME}.batch.trigger", f"{NAME}.batch.run")
TASK_STATE = (f"{NAME}.reattach", f"{NAME}.lineage", f"{NAME}.links")
IO_LIBRARIES = ("httpx", "boto3", "botocore", "airflow", "tenacity", "asyncio")

RULES = [
    # (modules, what they must never reach, only what runs at import time?, why)
    (["models"], (*IO_LIBRARIES, f"{NAME}.hooks", f"{NAME}.media"), True, "models are pure data"),
    (["polling"], (*OPERATORS, *TRIGGERS), False, "polling knows no trigger or operator"),
    (["hooks"], (*OPERATORS, *TRIGGERS, *TASK_STATE), False, "hooks know no task"),
    (
        ["triggers", "batch.trigger", "batch.run"],
        (*OPERATORS, *TASK_STATE),
        False,
        "triggers import no operator",
    ),
]


@pytest.mark.parametrize(("prefixes", "forbidden", "at_import", "why"), RULES, ids=[r[3] for r in RULES])
def test_import_rules(prefixes: list[str], forbidden: tuple[str, ...], at_import: bool, why: str) -> None:
    modules = [m for prefix in prefixes for m in under(prefix)]
    assert modules, f"no module matched {prefixes}"
    broken = {m: found for m in modules if (found := hits(m, forbidden, at_import))}
    assert broken == {}, why


def test_runtime_never_imports_the_emulator() -> None:
    runtime = [m for m in MODULES if not m.startswith(f"{NAME}.emulator")]
    assert {m: found for m in runtime if (found := hits(m, (f"{NAME}.emulator",)))} == {}


def test_the_rules_see_a_violation() -> None:
    """The checker itself: it sees what is there, lazy imports included unless asked not to."""
    assert f"{NAME}.hooks.runcomfy" in reachable(f"{NAME}.triggers.runcomfy")
    assert f"{NAME}.models" in reachable(f"{NAME}.polling")
    assert hits(f"{NAME}.batch.operator", TRIGGERS)  # the operator defers to its trigger: seen
    assert f"{NAME}.media.hook" in reachable(f"{NAME}.batch.trigger")  # imported inside a method
    assert f"{NAME}.media.hook" not in reachable(f"{NAME}.batch.trigger", at_import=True)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines(module: str) -> None:
    assert len(MODULES[module].read_text().splitlines()) <= MAX_MODULE_LINES

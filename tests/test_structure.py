"""The shape of the code, checked so it does not drift: no import circle among chatcli's modules (lazy
imports inside functions included), each UI library in its one place, the core free of UI libraries, and
no function or class too long to read whole (MAX_FUNCTION_LINES, MAX_CLASS_LINES)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "chatcli"
#: a function's body (its docstring aside) fits one screen: a reader sees all of what it does at once. The
#: longest today are config.resolve and context.plan (about 65 lines); the turn's loop is under 20.
MAX_FUNCTION_LINES = 70
#: a class reads as one thing: the largest today is ConversationSession (about 440 lines, half of them
#: docstrings, its planner, turn and edits composed from other modules); the folder store and its index
#: are under 300, SQLStore about 250 (its engine, connection, catalog and schema composed). A file may be
#: as long as the pieces it holds: a cap on files pushed code into mixins.
MAX_CLASS_LINES = 450
#: the modules allowed to import each UI library
UI_HOMES = {
    "rich": {"chatcli.render"},
    "prompt_toolkit": {"chatcli.repl"},
    "typer": {"chatcli.cli", "chatcli.cli_common", "chatcli.cli_ask", "chatcli.cli_library"}
    | {"chatcli.cli_stores", "chatcli.cli_tools"},
}
#: the core: the session, its data, the stores and the backends
CORE = ("chatcli.session", "chatcli.planner", "chatcli.turn", "chatcli.model", "chatcli.wire")
CORE += ("chatcli.messages", "chatcli.snapshot", "chatcli.compaction", "chatcli.edits", "chatcli.reasoning")
CORE_PACKAGES = ("chatcli.stores", "chatcli.backends")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (inside functions too), TYPE_CHECKING blocks
    left out (they never run)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_import_circle() -> None:
    mods = modules()
    graph = {m: {d for d in imports(p) if d in mods and d != m and d != "chatcli"} for m, p in mods.items()}
    circles: list[list[str]] = []

    def visit(m: str, path: list[str], done: set[str]) -> None:
        for d in sorted(graph[m]):
            if d in path:
                circles.append([*path[path.index(d) :], d])
            elif d not in done:
                visit(d, [*path, d], done)
        done.add(m)

    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [m], done)
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("library", sorted(UI_HOMES))
def test_each_ui_library_is_imported_in_its_place_only(library: str) -> None:
    users = {
        m
        for m, p in modules().items()
        if any(i == library or i.startswith(library + ".") for i in imports(p))
    }
    assert users <= UI_HOMES[library], f"{library} imported by {sorted(users - UI_HOMES[library])}"


def test_the_core_imports_no_ui_module() -> None:
    ui = ("rich", "prompt_toolkit", "typer", "chatcli.render", "chatcli.repl", "chatcli.cli")
    core = [m for m in modules() if m in CORE or m.startswith(CORE_PACKAGES)]
    assert len(core) > 10
    bad = {
        m: sorted(i for i in imports(modules()[m]) if i.startswith(ui))
        for m in core
        if any(i.startswith(ui) for i in imports(modules()[m]))
    }
    assert bad == {}


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    """(function body lines, class lines) by ``module:name``."""
    functions: dict[str, int] = {}
    classes: dict[str, int] = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[f"{name}:{node.name}"] = (node.end_lineno or node.lineno) - node.lineno + 1
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]  # the docstring
                if body:
                    functions[f"{name}:{node.name}"] = (body[-1].end_lineno or 0) - body[0].lineno + 1
    return functions, classes


def test_no_function_or_class_too_long_to_read_whole() -> None:
    functions, classes = _sizes()
    assert {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES} == {}
    assert {c: n for c, n in classes.items() if n > MAX_CLASS_LINES} == {}

"""The package's layout rules, read from the source (no import runs): what may depend on what,
and where the environment may be read."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("zeroth", "extract", "index")

# Where `os.environ` (or os.getenv / os.putenv) may appear under zeroth/, per file and function
# ("<module>" for top-level code), and why. Everything we read is a field of
# zeroth.settings.Settings; the others are variables that belong to a library, or the
# environment handed on to a child process.
ENVIRON_ALLOWED: dict[tuple[str, str], str] = {
    ("zeroth/settings.py", "Settings.from_env"): "the one reader of our settings",
    ("zeroth/tiktoken_ids.py", "use_cache_dir"): (
        "tiktoken reads only its own TIKTOKEN_CACHE_DIR: settings.tiktoken_cache_dir is set there"
    ),
    ("zeroth/tiktoken_ids.py", "load_encoding"): (
        "where tiktoken will look (its own variable), to fail offline with a clear message"
    ),
    ("zeroth/pooling.py", "cuda_available"): (
        "PYTORCH_NVML_BASED_CUDA_CHECK is torch's: asking NVML keeps CUDA uninitialised in a "
        "gunicorn master that forks"
    ),
    ("zeroth/proxy.py", "NginxProxy.start"): (
        "nginx, started for a test or benchmark, inherits this process's environment; nothing "
        "is read from it here"
    ),
    ("zeroth/launch.py", "server_env"): (
        "the server a test or benchmark starts inherits this process's environment, as a "
        "deployed one does; nothing is read from it here"
    ),
    ("zeroth/gunicorn_worker.py", "_lean_allowed"): (
        "gunicorn builds SCRIPT_NAME from the environment into every environ itself; the lean "
        "route steps aside when it is set"
    ),
}


def sources(*folders: str) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def is_bench(module: str) -> bool:
    return module == "bench" or module.startswith("bench.")


def test_no_package_imports_bench() -> None:
    """bench/ holds speed and load tools that use the package, never the other way round."""
    found = [
        f"{rel}:{line} imports {module}"
        for rel, tree in sources(*PACKAGES)
        for line, module in imported_modules(tree)
        if is_bench(module)
    ]
    assert found == []


def test_no_test_imports_bench() -> None:
    """The tests run on an installed package and its data alone; bench/ has its own tests."""
    found = [
        f"{rel}:{line} imports {module}"
        for rel, tree in sources("tests")
        for line, module in imported_modules(tree)
        if is_bench(module)
    ]
    assert found == []


def environ_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, enclosing "Class.function" or "<module>") of every os.environ / os.getenv /
    os.putenv, and of every import of those names from os."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scope = [*scope, node.name]
        hit = (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "environb", "getenv", "putenv", "unsetenv")
        ) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(a.name in ("environ", "environb", "getenv", "putenv") for a in node.names)
        )
        if hit:
            found.append((node.lineno, ".".join(scope) or "<module>"))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, [])
    return iter(found)


def test_environment_is_read_only_where_allowed() -> None:
    used: dict[tuple[str, str], list[int]] = {}
    for rel, tree in sources("zeroth"):
        for line, scope in environ_uses(tree):
            used.setdefault((rel, scope), []).append(line)
    unexpected = [
        f"{rel}:{lines[0]} in {scope}"
        for (rel, scope), lines in used.items()
        if (rel, scope) not in ENVIRON_ALLOWED
    ]
    assert unexpected == [], (
        "read the setting from zeroth.settings.Settings (or list a library's own variable in "
        "ENVIRON_ALLOWED, with the reason)"
    )
    stale = sorted(set(ENVIRON_ALLOWED) - set(used))
    assert stale == [], "these no longer touch os.environ: remove them from ENVIRON_ALLOWED"


def test_the_layout_checks_can_fail() -> None:
    """The detectors above see what they are meant to see."""
    tree = ast.parse(
        "import os\nimport bench.common\nfrom bench import loadtest\n"
        "x = os.environ.get('A')\n"
        "class C:\n    def f(self):\n        return os.getenv('B')\n"
    )
    assert [m for _, m in imported_modules(tree) if is_bench(m)] == ["bench.common", "bench"]
    assert list(environ_uses(tree)) == [(4, "<module>"), (7, "C.f")]

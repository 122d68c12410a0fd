"""The package's import graph has no cycle, and every module imports on its own.

A cycle works until someone moves one import to module level, then fails at
start-up with a half-initialised module; and it says the layering is wrong
(a lower module reaching up). The graph is read from the source (every
``import`` statement, those inside functions and ``if TYPE_CHECKING:`` too),
so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tirreno_shipper

PACKAGE = Path(tirreno_shipper.__file__).parent
NAME = "tirreno_shipper"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod when there is one.
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in MODULES else base)
    found: set[str] = set()
    for imported in targets:
        # `import a.b.c` of a name inside a module: the deepest module it names.
        target = imported
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        # A parent package is imported before its modules by Python itself: that edge
        # is not the module's doing, and counting it would make every module a cycle.
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        on_path = {start}
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                on_path.discard(node)
                done.add(node)
                continue
            nxt = todo.pop()
            if nxt in on_path:
                path = [n for n, _ in stack]
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                stack.append((nxt, sorted(graph.get(nxt, ()))))
                on_path.add(nxt)
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check below would pass on any graph if this did not find one."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_inside_functions() -> None:
    """daemon imports logs inside a function: the graph has that edge."""
    assert f"{NAME}.logs" in _imports(f"{NAME}.daemon", MODULES[f"{NAME}.daemon"])


def test_the_package_has_no_import_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


# Run in a fresh interpreter: what the package uses from outside itself (argv[1]) is
# imported first, once, then each package module (argv[2]) is imported alone in a
# forked child, where nothing of the package was imported before. Preloading is what
# keeps this cheap: each child pays only for the package's own modules. So the names
# imported are loaded too (`from pydantic import BaseModel`: pydantic builds BaseModel's
# machinery lazily, on first access, else in every child again), and the package is
# compiled to bytecode once, in a folder of this run (with PYTHONDONTWRITEBYTECODE each
# child compiled every module it imports again). Neither puts a module of the package
# in sys.modules before a child imports its one.
_IMPORT_EACH = """
import compileall, importlib, importlib.util, os, sys, tempfile, traceback
for spec in filter(None, sys.argv[1].split(",")):
    lib, _, name = spec.partition(":")
    try:
        module = importlib.import_module(lib)
        if name and not hasattr(module, name):
            importlib.import_module(f"{lib}.{name}")
    except Exception:
        pass  # an optional library: the package module that needs it says so below
modules = sys.argv[2].split(",")
with tempfile.TemporaryDirectory() as cache:
    sys.pycache_prefix, sys.dont_write_bytecode = cache, False
    package = importlib.util.find_spec(modules[0].partition(".")[0])  # finds, imports nothing
    compileall.compile_dir(package.submodule_search_locations[0], quiet=2)
    for module in modules:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(module)
            except BaseException:
                print(module, traceback.format_exc(), sep="\\n", flush=True)
                os._exit(1)
            os._exit(0)
        os.waitpid(pid, 0)
"""


def _third_party() -> set[str]:
    """What the package imports from outside itself: ``module`` or ``module:name``."""
    names: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.update(f"{node.module}:{alias.name}" for alias in node.names)
    return {
        n
        for n in names
        if (top := n.partition(".")[0].partition(":")[0]) != NAME
        and top not in sys.stdlib_module_names
    }


def test_each_module_imports_alone() -> None:
    """Each with nothing of the package imported before it (see _IMPORT_EACH)."""
    # __main__ runs the command line when imported: that is its job.
    modules = [m for m in sorted(MODULES) if not m.endswith(".__main__")]
    r = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, ",".join(sorted(_third_party())), ",".join(modules)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0 and not r.stdout, r.stdout + r.stderr


def test_the_isolated_import_check_catches_a_module_that_fails_alone(tmp_path: Path) -> None:
    """Modules that import each other and read a name the other has not set yet fail
    when imported first: the check reports them."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import pkg.b\nX = pkg.b.Y\n")
    (pkg / "b.py").write_text("import pkg.a\nY = 1\nZ = pkg.a.X\n")
    r = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, "", "pkg.a,pkg.b"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert "pkg.b" in r.stdout and "AttributeError" in r.stdout, r.stdout + r.stderr


def test_the_command_line_starts_without_the_configuration_model() -> None:
    """Importing the command line loads no pydantic, YAML or SQLAlchemy: --version, --help,
    detect-format, sink, man and completion read no configuration (and ran 3x slower)."""
    heavy = ("pydantic", "yaml", "sqlalchemy", f"{NAME}.config")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {NAME}.cli; print([m for m in {heavy!r} if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and r.stdout == "[]\n", r.stdout + r.stderr

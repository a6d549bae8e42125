"""The code base's layering, checked on the source (ARCHITECTURE.md): in the package, imports point down
only, no import cycles, no module over 500 lines; the package imports neither tests/ nor benchmarks/, and
tests/ never imports benchmarks/ (benchmarks and tests may import mmsearch freely); benchmark scripts keep
the same size cap. Every import counts: inside functions too, and string imports (``importlib.import_module``,
``__import__``, ``importlib.resources.files``). The last tests run the checker on a synthetic bad tree, so a
check that stops seeing anything fails."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own subpackage and any lower layer, never a higher one or a
# sibling of the same layer: __main__ -> cli -> commands -> server/train -> dist/evaluate -> search -> index ->
# encode -> catalog/models -> fsutil/config -> errors.
LAYERS = [
    {"_version", "errors"},
    {"config", "fsutil", "ranges", "cpus", "progress"},
    {"models", "catalog"},
    {"encode"},
    {"index"},
    {"search"},
    {"dist", "evaluate"},
    {"train", "server"},
    {"commands"},
    {"cli", "__init__"},
    {"__main__"},
]
MAX_LINES = 500
# Benchmark scripts over MAX_LINES, each with the reason it stays whole. Each made committed results in
# benchmarks/results/ with the command line written there; splitting one means re-running it to show the
# split changed no number.
SIZE_EXCEPTIONS = {
    "benchmarks/bench_lodo.py": "the leave-one-domain-out protocol behind the shipped model (MODEL_CARD.md, "
                                "lodo*.md): corpus loading, head training and the ship rule in one reviewed run",
    "benchmarks/bench_encode.py": "encode throughput, per-stage costs and query latency side by side in one "
                                  "process run (encode_*.md), so ratios are taken under one machine load",
    "benchmarks/build_corpus.py": "the evaluation corpus every quality result names (lodo*.md, quality*.md); "
                                  "its domains' readers live in corpus_domains.py and corpus_photos.py",
}

# ------------------------------------------------------------------------------------------ the checker
IMPORT_CALLS = {"import_module", "__import__", "files"}  # importlib.import_module, __import__, resources.files


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _resolve(name: str, package: str) -> str:
    """``.x.y`` relative to ``package`` -> an absolute dotted name (``x.y`` is returned as is)."""
    if not name.startswith("."):
        return name
    level = len(name) - len(name.lstrip("."))
    base = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join(base + ([name.lstrip(".")] if name.lstrip(".") else []))


def imports_in(path: Path, package: str, known: set[str] | frozenset[str] = frozenset(), module: str = "") -> set[str]:
    """Every dotted name the file at ``path`` (module ``module`` of ``package``) imports.

    ``from pkg import mod`` yields ``pkg.mod`` when that is in ``known``, else ``pkg``. A string import with
    a literal name counts as an import of that name; a string import with a computed name (``mmsearch``'s
    lazy ``__getattr__``) counts every string in the file that names a module in ``known``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve("." * node.level + (node.module or ""), package) if node.level else node.module or ""
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
        elif isinstance(node, ast.Call) and _call_name(node) in IMPORT_CALLS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(_resolve(arg.value, _anchor(node, package, module)))
            elif _call_name(node) != "files":
                dynamic = True
    if dynamic:
        found.update(name for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
                     for anchor in (package, module) if (name := _resolve(node.value, anchor)) in known)
    return found


def _anchor(call: ast.Call, package: str, module: str) -> str:
    """The package a string import's relative name starts from: ``import_module(name, package)``'s second
    argument (a literal, ``__name__`` or ``__package__``), else the importing module's package."""
    arg = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"), None)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name) and arg.id == "__name__":
        return module or package
    return package


def _adds_to_sys_path(path: Path, words: tuple[str, ...]) -> list[str]:
    """``sys.path.insert/append(...)`` calls whose arguments mention one of ``words`` (e.g. "benchmarks")."""
    text = path.read_text(encoding="utf-8")
    hits = []
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("insert", "append")
                and ast.unparse(node.func.value) == "sys.path"):
            src = ast.unparse(node)
            hits += [f"{path.name}:{node.lineno} {src}" for w in words if w in src]
    return hits


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


class Tree:
    """One checkout: mmsearch/, tests/, benchmarks/ under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.pkg = root / "mmsearch"
        self.modules = {self.module_name(p): p for p in sorted(self.pkg.rglob("*.py"))}
        known = set(self.modules)
        self.imports = {name: imports_in(p, self.package_of(name), known, name) for name, p in self.modules.items()}
        self.graph = {name: {t for t in found if t in self.modules and t != name} for name, found in self.imports.items()}
        self.tests = sorted((root / "tests").rglob("*.py"))
        self.benchmarks = sorted((root / "benchmarks").rglob("*.py"))
        # what importing a benchmark script looks like: by folder, or by file name (they put benchmarks/ on sys.path)
        self.bench_names = {"benchmarks"} | {p.stem for p in self.benchmarks} - {"conftest", "__init__"}
        self.test_names = {"tests", "helpers", "conftest"} | {p.stem for p in self.tests} - {"__init__"}

    def module_name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def package_of(self, name: str) -> str:
        return name if self.modules[name].name == "__init__.py" else name.rpartition(".")[0]

    # ---------------------------------------------------------------------------------------- the rules
    def upward(self) -> list[str]:
        return [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                for a, targets in self.graph.items() for b in sorted(targets)
                if top(a) != top(b) and layer(b) >= layer(a)]

    def cycles(self) -> list[list[str]]:
        """Tarjan's strongly connected components: any component of more than one module is a cycle."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        cycles: list[list[str]] = []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(self.graph[v]):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))

        for v in sorted(self.graph):
            if v not in index:
                visit(v)
        return cycles

    def package_reaching_out(self) -> list[str]:
        """The package importing tests/ or benchmarks/ (by name, or by putting them on sys.path)."""
        outside = self.bench_names | self.test_names
        wrong = [f"{name} imports {t}" for name, found in self.imports.items() for t in sorted(found)
                 if t.split(".")[0] in outside]
        return wrong + [hit for p in self.modules.values() for hit in _adds_to_sys_path(p, ("benchmarks", "tests"))]

    def tests_importing_benchmarks(self) -> list[str]:
        wrong = [f"{p.relative_to(self.root)} imports {t}" for p in self.tests
                 for t in sorted(imports_in(p, "tests")) if t.split(".")[0] in self.bench_names]
        return wrong + [hit for p in self.tests for hit in _adds_to_sys_path(p, ("benchmarks",))]

    def conftest_imports(self) -> list[str]:
        """Test modules importing a conftest by name: with tests/ and benchmarks/tests/ in one run, the name
        means whichever conftest was imported first (use a fixture or tests/helpers/ instead)."""
        return [f"{p.relative_to(self.root)} imports {t}" for p in self.tests + self.benchmarks
                for t in sorted(imports_in(p, "tests")) if t.split(".")[0] == "conftest"]

    def oversized(self, exceptions: dict[str, str]) -> list[str]:
        files = list(self.modules.values()) + self.benchmarks
        return [f"{p.relative_to(self.root)} has {n} lines (at most {MAX_LINES}): split it by concern"
                for p in files if (n := _lines(p)) > MAX_LINES and str(p.relative_to(self.root)) not in exceptions]


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if top(name) in group:
            return i
    raise AssertionError(f"{name} belongs to no layer: add its folder to LAYERS in {__file__}")


TREE = Tree(ROOT)


# ----------------------------------------------------------------------------------------- this checkout
def test_every_module_has_a_layer():
    for name in TREE.modules:
        layer(name)


def test_imports_point_down_only():
    wrong = TREE.upward()
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_import_cycles():
    assert not TREE.cycles(), f"import cycles: {TREE.cycles()}"


def test_the_package_imports_neither_tests_nor_benchmarks():
    wrong = TREE.package_reaching_out()
    assert not wrong, "mmsearch must not depend on tests/ or benchmarks/:\n" + "\n".join(wrong)


def test_tests_do_not_import_benchmarks():
    wrong = TREE.tests_importing_benchmarks()
    assert not wrong, ("tests/ imports benchmarks/ (move the shared code into mmsearch or tests/helpers/; tests "
                       "of a benchmark script's own logic live in benchmarks/tests/):\n" + "\n".join(wrong))


def test_no_test_imports_a_conftest():
    wrong = TREE.conftest_imports()
    assert not wrong, "\n".join(wrong)


def test_module_size():
    wrong = TREE.oversized(SIZE_EXCEPTIONS)
    assert not wrong, "\n".join(wrong)


def test_size_exceptions_are_still_needed():
    for rel in SIZE_EXCEPTIONS:
        assert (ROOT / rel).is_file() and _lines(ROOT / rel) > MAX_LINES, \
            f"{rel} is gone or back under {MAX_LINES} lines: drop it from SIZE_EXCEPTIONS"


def test_the_checker_sees_function_level_and_string_imports(tmp_path):
    # search.engine imports index.build inside a method (upsert/remove): the graph must hold that edge
    assert "mmsearch.index.build" in TREE.graph["mmsearch.search.engine"]
    # train/loop.py reads its named configs through importlib.resources.files("mmsearch.train")
    assert "mmsearch.train" in TREE.imports["mmsearch.train.loop"]
    # mmsearch/__init__.py imports its public names by importlib.import_module(_LAZY[name], __name__): a
    # computed name, so every module its strings name counts (seen here without its TYPE_CHECKING imports)
    init = (ROOT / "mmsearch" / "__init__.py").read_text(encoding="utf-8")
    (tmp_path / "lazy.py").write_text(init[init.index("_LAZY = "):])
    lazy = imports_in(tmp_path / "lazy.py", "mmsearch", set(TREE.modules), "mmsearch")
    assert {"mmsearch.search.engine", "mmsearch.index.build", "mmsearch.models.factory"} <= lazy


# ---------------------------------------------------------------------- the checker on a synthetic bad tree
BAD_TREE = {
    "mmsearch/__init__.py": "",
    "mmsearch/errors.py": "import importlib\n\ndef f():\n    return importlib.import_module('mmsearch.search.engine')\n",
    "mmsearch/catalog/__init__.py": "",
    "mmsearch/catalog/scan.py": "import importlib\nimportlib.import_module('.engine', 'mmsearch.search')\n",
    "mmsearch/index/__init__.py": "",
    "mmsearch/index/store.py": "def f():\n    __import__('mmsearch.search.engine')\n",
    "mmsearch/search/__init__.py": "",
    "mmsearch/search/engine.py": ("from ..errors import f\n\ndef g():\n    import bench_big\n"
                                  "    from tests.helpers import files\n"),
    "mmsearch/search/ok.py": "from importlib import resources\nresources.files('mmsearch.catalog')\n",
    "mmsearch/server/__init__.py": "",
    "mmsearch/server/app.py": "import sys\nsys.path.insert(0, 'benchmarks')\n",
    "benchmarks/bench_big.py": "import mmsearch\n" + "x = 1\n" * MAX_LINES,
    "benchmarks/tests/test_bench_big.py": "import bench_big\n",
    "tests/test_plain.py": "import importlib\nbb = importlib.import_module('bench_big')\n",
    "tests/test_path.py": ("import sys\nfrom pathlib import Path\n"
                           "sys.path.insert(0, str(Path(__file__).parents[1] / 'benchmarks'))\n"),
    "tests/test_from.py": "from benchmarks.bench_big import x\n",
    "tests/test_conf.py": "def test():\n    from conftest import ROOT\n",
    "tests/helpers/__init__.py": "",
}


@pytest.fixture()
def bad_tree(tmp_path) -> Tree:
    for rel, text in BAD_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return Tree(tmp_path)


def test_checker_catches_upward_string_imports_and_their_cycle(bad_tree):
    wrong = bad_tree.upward()
    assert "mmsearch.errors (layer 0) imports mmsearch.search.engine (layer 5)" in wrong  # import_module
    assert "mmsearch.catalog.scan (layer 2) imports mmsearch.search.engine (layer 5)" in wrong  # relative
    assert "mmsearch.index.store (layer 4) imports mmsearch.search.engine (layer 5)" in wrong  # __import__
    assert len(wrong) == 3  # resources.files('mmsearch.catalog') from search is downward: fine
    assert ["mmsearch.errors", "mmsearch.search.engine"] in bad_tree.cycles()


def test_checker_catches_the_package_importing_tests_or_benchmarks(bad_tree):
    wrong = "\n".join(bad_tree.package_reaching_out())
    assert "mmsearch.search.engine imports bench_big" in wrong
    assert "mmsearch.search.engine imports tests.helpers" in wrong
    assert "app.py:2 sys.path.insert(0, 'benchmarks')" in wrong


def test_checker_catches_tests_importing_benchmarks(bad_tree):
    wrong = "\n".join(bad_tree.tests_importing_benchmarks())
    assert "tests/test_plain.py imports bench_big" in wrong
    assert "tests/test_from.py imports benchmarks.bench_big" in wrong
    assert "test_path.py:3 sys.path.insert" in wrong
    assert "test_bench_big" not in wrong  # benchmarks/tests/ may import the scripts it tests


def test_checker_catches_a_test_importing_a_conftest(bad_tree):
    assert bad_tree.conftest_imports() == ["tests/test_conf.py imports conftest"]


def test_checker_catches_an_oversized_benchmark(bad_tree):
    assert bad_tree.oversized({}) == [f"benchmarks/bench_big.py has {MAX_LINES + 1} lines (at most {MAX_LINES}): "
                                      "split it by concern"]
    assert bad_tree.oversized({"benchmarks/bench_big.py": "why"}) == []

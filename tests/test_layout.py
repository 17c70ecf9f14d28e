"""The tests mirror the packages, and `pytest -m "not slow"` is a real fast loop.

tests/<pkg>/ holds the tests of optpipe/<pkg> (tests/passes/ those of the top-level passes/ package), so
a reader finds a module's tests by its path. tests/hostile/ and tests/wrong_verdicts/ are cross-cutting
suites; tests/fixtures/ holds the models and files tests load. The fast loop leaves out every test marked
``slow``; what keeps it fast is checked statically here: a module-scoped fixture that builds or exports a
model runs for the first test that asks for it (a function-scoped one for every test), so only slow tests
may ask for one.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CROSS_CUTTING = {"hostile", "wrong_verdicts"}
NOT_TESTS = {"fixtures", "__pycache__"}
BUILD_CALLS = {"build", "build_with_options", "build_many", "export"}  # optpipe.build, a whole build, an export
CLI_BUILDS = {"build", "sweep", "engine", "verify"}  # CLI commands that export/build a model


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if not NOT_TESTS & set(p.relative_to(TESTS).parts))


# A test folder named like an uninstalled package shadows it: pytest puts tests/runtime on sys.path, so a
# tests/runtime/trt folder made `import tensorrt` succeed as an empty namespace package.
ALIASES = {("runtime", "trt"): ("runtime", "tensorrt")}


def _package_for(test_dir: Path) -> Path:
    """tests/passes -> passes/; tests/runtime/trt -> optpipe/runtime/tensorrt (see ALIASES)."""
    parts = test_dir.relative_to(TESTS).parts
    parts = ALIASES.get(parts, parts)
    return ROOT.joinpath(*parts) if parts[0] == "passes" else ROOT.joinpath("optpipe", *parts)


def test_every_test_folder_mirrors_a_package() -> None:
    folders = {p.parent for p in _test_files() if p.parent != TESTS}
    mirrored = {f for f in folders if f.relative_to(TESTS).parts[0] not in CROSS_CUTTING}
    assert mirrored, "no package test folders found"
    missing = sorted(str(f.relative_to(TESTS)) for f in mirrored if not (_package_for(f) / "__init__.py").is_file())
    assert not missing, f"test folders without a package of the same path: {missing}"


def _probed_packages() -> set[str]:
    """The packages the tests probe for before using them (``importorskip("X")``, ``find_spec("X")``)."""
    probe = re.compile(r"""(?:importorskip|find_spec)\(\s*["']([A-Za-z_][\w.]*)["']""")
    return {name.split(".")[0] for path in _test_files() for name in probe.findall(path.read_text(encoding="utf-8"))}


def test_no_test_folder_shadows_a_probed_package() -> None:
    """A test folder named like a package the tests probe for resolves that import when the package is absent
    (pytest puts the folder's parent on sys.path): the probe then passes and the test fails instead of skipping."""
    probed = _probed_packages()
    assert "tensorrt" in probed  # the probes are found (the TensorRT tests skip through them)
    shadowing = sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("*") if p.is_dir() and p.name in probed)
    assert not shadowing, f"test folders named like a probed package: {shadowing}"


def test_test_file_names_are_unique() -> None:
    """No __init__.py under tests/: pytest's default import mode imports test files by their basename."""
    counts = Counter(p.name for p in _test_files())
    assert not [name for name, n in counts.items() if n > 1]
    assert not list(TESTS.rglob("__init__.py"))


def test_slow_marker_is_registered(pytestconfig: pytest.Config) -> None:
    assert any(marker.split(":")[0].strip() == "slow" for marker in pytestconfig.getini("markers"))
    assert "slow" not in " ".join(pytestconfig.getini("addopts")), "plain `pytest` must still run every test"


def _marked_slow(decorators: list[ast.expr]) -> bool:
    return any(ast.unparse(d).endswith("mark.slow") for d in decorators)


def _runs_a_cli_build(call: ast.Call) -> bool:
    """``run("build", ...)``, ``invoke(main, ["build", ...])``, ``subprocess.run([OPTPIPE, "build", ...])``."""
    for arg in call.args[:2]:
        words = arg.elts[:3] if isinstance(arg, (ast.List, ast.Tuple)) else [arg]
        if any(isinstance(w, ast.Constant) and w.value in CLI_BUILDS for w in words):
            return True
    return False


def _calls_a_build(node: ast.AST, helpers: dict[str, ast.FunctionDef], seen: frozenset[str] = frozenset()) -> bool:
    """A call of optpipe.build()/build_with_options()/build_many() or a CLI build, here or in a helper it calls."""
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in BUILD_CALLS or _runs_a_cli_build(call):
            return True
        if name in helpers and name not in seen and _calls_a_build(helpers[name], helpers, seen | {name}):
            return True
    return False


def _marks_the_file_slow(statement: ast.stmt) -> bool:
    """``pytestmark = pytest.mark.slow`` or a ``pytestmark`` list that holds it."""
    if not (isinstance(statement, ast.Assign) and ast.unparse(statement.targets[0]) == "pytestmark"):
        return False
    value = statement.value
    marks = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
    return any(ast.unparse(mark) == "pytest.mark.slow" for mark in marks)


def _is_fixture(function: ast.FunctionDef) -> bool:
    return any(ast.unparse(d).split("(")[0].endswith("fixture") for d in function.decorator_list)


def _fast_tests_using_a_building_fixture(name: str, source: str) -> list[str]:
    """Tests of this file, not marked slow, that ask for a fixture which builds or exports a model (or for one that
    asks for such a fixture)."""
    tree = ast.parse(source)
    if any(_marks_the_file_slow(n) for n in tree.body):
        return []
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    helpers = {f.name: f for f in functions}
    fixtures = {f.name: f for f in functions if _is_fixture(f)}

    def builds(fixture: ast.FunctionDef, seen: frozenset[str]) -> bool:
        wanted = [a.arg for a in fixture.args.args if a.arg in fixtures and a.arg not in seen]
        return _calls_a_build(fixture, helpers) or any(builds(fixtures[w], seen | {w}) for w in wanted)

    building = {f for f, fixture in fixtures.items() if builds(fixture, frozenset({f}))}
    return [
        f"{name}::{f.name} uses {sorted(building & {a.arg for a in f.args.args})}"
        for f in functions
        if f.name.startswith("test_") and not _marked_slow(f.decorator_list) and building & {a.arg for a in f.args.args}
    ]


def test_only_slow_tests_use_a_fixture_that_builds() -> None:
    offenders = [
        line
        for path in _test_files()
        for line in _fast_tests_using_a_building_fixture(str(path.relative_to(TESTS)), path.read_text())
    ]
    assert not offenders, "mark these slow (the fixture builds or exports a model):\n" + "\n".join(offenders)


def _builds_at_import(source: str) -> bool:
    """A statement outside every function that builds: it would run at collection, for the fast loop too."""
    body = ast.parse(source).body
    helpers = {n.name: n for n in body if isinstance(n, ast.FunctionDef)}
    top = [n for n in body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return any(_calls_a_build(statement, helpers) for statement in top)


def test_no_test_file_builds_when_it_is_imported() -> None:
    offenders = [str(p.relative_to(TESTS)) for p in _test_files() if _builds_at_import(p.read_text())]
    assert not offenders, f"these build a model at import (collection) time: {offenders}"
    assert _builds_at_import("import optpipe\nREPORT = optpipe.build(None, ())\n")
    in_a_function = "import optpipe\nBUILD = ['build', 'm.py:Net']\ndef f():\n    optpipe.build(None, ())\n"
    assert not _builds_at_import(in_a_function)


def test_the_building_fixture_check_sees_a_building_fixture() -> None:
    """The check is not vacuous: unmarked tests of a building fixture, or of one that asks for it, are reported."""
    source = (
        "import pytest, optpipe\n"
        "@pytest.fixture(scope='module')\n"
        "def built(tmp_path_factory):\n"
        "    return optpipe.build(None, (), out_dir=tmp_path_factory.mktemp('b'))\n"
        "def test_reads_it(built):\n"
        "    assert built\n"
        "@pytest.fixture()\n"
        "def copied(built):\n"
        "    return built\n"
        "def test_reads_a_copy(copied):\n"
        "    assert copied\n"
        "@pytest.mark.slow\n"
        "def test_slow_reads_it(built):\n"
        "    assert built\n"
    )
    offenders = _fast_tests_using_a_building_fixture("probe.py", source)
    assert offenders == ["probe.py::test_reads_it uses ['built']", "probe.py::test_reads_a_copy uses ['copied']"]
    for marks in ("pytest.mark.slow", "[pytest.mark.gpu, pytest.mark.slow]"):
        assert _fast_tests_using_a_building_fixture("probe.py", f"import pytest\npytestmark = {marks}\n" + source) == []

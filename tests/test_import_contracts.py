"""The import-linter contracts in pyproject.toml: they hold, and they catch what they forbid.

Layers read top-down (cli -> matrix -> builder -> report -> passes -> cache | precision ->
model -> infra -> compare -> runtime -> onnx -> core) and
no package's modules import each other in a cycle. ``lint-imports`` runs on the
package as pip installs it: ``passes/`` is ``optpipe/passes/`` there
(``[tool.setuptools] package-dir``), and import-linter finds subpackages by
walking the package's directory, so the source tree alone would hide the
passes layer. The failure cases add a real forbidden import to a copy and
expect the real linter to reject it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # 3.10: the tomli backport optpipe depends on there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(destination: Path) -> Path:
    """Copy every package to where ``package-dir`` installs it, plus pyproject.toml (the contracts)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    for package, source in sorted(package_dir.items()):  # "optpipe" before "optpipe.passes"
        shutil.copytree(ROOT / source, destination / package.replace(".", "/"),
                        ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``lint-imports`` command on the packages under ``root`` (found first on PYTHONPATH)."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.is_file() else [
        sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*command, "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_layout(tmp_path_factory.mktemp("installed"))


def test_the_contracts_hold(layout: Path) -> None:
    result = lint_imports(layout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout
    # The passes layer was analysed (it is only visible in the installed layout).
    assert "KEPT" in result.stdout and (layout / "optpipe" / "passes" / "validate.py").is_file()


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("optpipe/core/tensor_spec.py", "import optpipe.cli.main", "cli -> matrix -> builder"),
        ("optpipe/runtime/target.py", "import optpipe.passes.engine_ort", "cli -> matrix -> builder"),
        ("optpipe/cache/store.py", "import optpipe.report.build_report", "cli -> matrix -> builder"),
        ("optpipe/cache/store.py", "import optpipe.precision.calib_data", "cli -> matrix -> builder"),
        ("optpipe/precision/guard/gate.py", "import optpipe.passes.validate", "cli -> matrix -> builder"),
        ("optpipe/compare/parity.py", "import optpipe.infra.pass_base", "cli -> matrix -> builder"),
        ("optpipe/passes/validate.py", "import optpipe.builder.run", "cli -> matrix -> builder"),
        ("optpipe/core/safe_output.py", "import optpipe.core.console", "no import cycles"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, forbidden: str, contract: str) -> None:
    root = installed_layout(tmp_path)
    importer = root / module
    importer.write_text(importer.read_text(encoding="utf-8") + f"\n{forbidden}  # added by the test\n",
                        encoding="utf-8")
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
    importer_name = module.removesuffix(".py").replace("/", ".")
    assert importer_name in broken or importer_name.rsplit(".", 1)[-1] in broken, result.stdout

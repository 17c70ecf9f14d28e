"""Packaging metadata: one version, an SPDX licence that matches the LICENSE file."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import optpipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_an_spdx_expression_matching_the_license_file() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub


def test_version_is_written_once() -> None:
    data = _pyproject()
    assert "version" not in data["project"] and "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "optpipe.core.version.__version__"}
    # the installed metadata (pip install -e .) reads the same value
    assert importlib.metadata.version("optpipe") == optpipe.__version__
    assert optpipe.__version__ is optpipe.core.version.__version__  # the root re-exports the one value


def test_installed_metadata_carries_license_and_classifiers() -> None:
    meta = importlib.metadata.metadata("optpipe")
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(c.startswith("Topic ::") for c in meta.get_all("Classifier") or [])

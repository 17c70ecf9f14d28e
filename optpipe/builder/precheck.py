"""Checks of ``optpipe build``'s arguments that need no torch, run before torch is imported.

Importing torch takes seconds; a typo in the model path, an existing
``--out`` or a malformed ``--dynamic`` should fail at once with the same
one-line error the full load would give (the checks reuse the loader's own
messages). Everything here only reads paths and parses text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from optpipe.builder.out_dir import check_out_dir
from optpipe.core.errors import UserInputError
from optpipe.model.input_parsing import parse_dynamic, parse_input
from optpipe.model.loading import EXPORTED_SUFFIXES, PICKLE_SUFFIXES, SPEC_USAGE, _require_file


def check_model_spec(spec: str) -> None:
    """The model file a spec names exists (a ``package.module:NAME`` spec is checked by importing it, later)."""
    spec = spec.strip()
    path = Path(spec)
    if path.suffix in EXPORTED_SUFFIXES or path.suffix in PICKLE_SUFFIXES:
        _require_file(path, "exported program" if path.suffix in EXPORTED_SUFFIXES else "model file")
        return
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.strip():
        return  # the loader explains a spec without NAME (it lists the file's candidates)
    if target.endswith(".py") or "/" in target or "\\" in target:
        file_path = Path(target)
        _require_file(file_path, "model file")
        if file_path.suffix != ".py":
            raise UserInputError(f"model file '{file_path}' must be a .py file ({SPEC_USAGE})")


def precheck_build(spec: str, *, out_dir: Path, overwrite: bool, weights: Path | None = None,
                   dynamics: Sequence[str] = (), inputs: Sequence[str] = ()) -> None:
    """Every check of a build's arguments that needs no torch; UserInputError (exit 2) on the first problem."""
    check_model_spec(spec)
    if weights is not None:
        _require_file(Path(weights), "weights file")
    check_out_dir(Path(out_dir), overwrite)
    for text in dynamics:
        parse_dynamic(text)
    for text in inputs:
        parse_input(text)


def _model_file(spec: str) -> Path | None:
    """The file a model spec names (``file.py:Name`` or a ``.pt2``/``.pt`` path), or None for a module spec."""
    spec = spec.strip()
    if Path(spec).suffix in EXPORTED_SUFFIXES or Path(spec).suffix in PICKLE_SUFFIXES:
        return Path(spec)
    target, sep, _name = spec.rpartition(":")
    return Path(target) if sep and target.endswith(".py") else None


def check_outputs(spec: str | None, *, out_dirs: Sequence[Path], outputs: Mapping[str, Path | None],
                  inputs: Sequence[Path | str | None] = (), cache_dir: Path | None = None,
                  mlflow_uri: str | None = None) -> None:
    """The user-named output files (``{"--junit": path, ...}``) against the build's inputs, --out and cache.

    Also refuses an ``--out`` that is the cache directory or holds it (the publish would replace the
    cache, or the cache would evict the build), judged by resolved path, not by spelling; and MLflow's
    local store (``mlflow_uri``: an SQLite file, a ``file:`` directory) by the same guard.
    """
    from optpipe.cache.store import default_cache_dir
    from optpipe.core.safe_output import OutputGuard, check_output, guard_refusal, resolved

    cache = resolved(cache_dir or default_cache_dir())
    for out in out_dirs:
        where = resolved(out)
        if where == cache or where in cache.parents or cache in where.parents:
            raise UserInputError(f"--out {out} and the cache directory {cache} overlap; give each its own directory")
    model = _model_file(spec) if spec else None
    guard = OutputGuard.of([model, *inputs], out_dirs, cache)
    for option, path in outputs.items():
        check_output(path, option, guard)
    store = local_store(mlflow_uri) if mlflow_uri is not None else None
    reason = guard_refusal(store, guard) if store is not None else None
    if reason:
        raise UserInputError(f"--mlflow {mlflow_uri}: MLflow cannot write its local store there: {reason}")


def local_store(uri: str) -> Path | None:
    """The local path an MLflow tracking URI writes (``sqlite:///x.db``, ``file:/dir``, a plain path), or None."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(uri) if uri and not parsed.scheme else None

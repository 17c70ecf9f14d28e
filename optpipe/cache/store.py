"""A content-addressed cache of pass outputs, shared by builds on one machine.

Why: in CI most rebuilds change nothing upstream of the precision passes, yet
export alone takes seconds to minutes. A pass whose output is a pure function
of its input artifact, its config, the package versions it uses and a few
build facts can be skipped by copying the files it made last time.

How it plugs in: :class:`PassCache` is a pipeline *instrument*
(:class:`optpipe.infra.pipeline.Instrument`). ``before_pass`` computes the key and,
on a hit, copies the recorded files into the build's staging directory at the
same relative paths, re-checks their sha256 and returns the recorded
:class:`~optpipe.infra.pass_base.PassResult` (the pipeline records the pass as
``cached``). On a miss the pass runs, and ``after_pass`` stores every file the
pass created or changed in the staging directory (a directory snapshot taken
before the pass tells which), plus a JSON record.

Passes that declare ``cacheable = True`` are cached. The measuring passes
(validate, benchmark: :data:`MEASUREMENTS`) are reused only under exactly the
same conditions: on top of the usual key, the model's fingerprint (the PyTorch
side of parity and of the speedup), the threads, the versions of every runtime
(:data:`RUNTIMES`) and the host (:func:`host_facts`: name, CPU, core count, OS);
a reused measurement says so (status ``cached``, and ``cached`` in its metrics:
when and where it was measured), and ``--rebench``
(``BuildContext.reuse_measurements``) measures again. The key covers the input artifact's
sha256 (for the torch module, which has no file: what it computes,
:func:`model_fingerprint` - its outputs on the example inputs from one forward
pass run fresh in this build, every parameter and buffer including
non-persistent ones, its submodules' plain attributes, and the source of its
classes and of the project modules they import; see :mod:`optpipe.cache.model_identity`
for what that cannot see), the
pass name, code (its file and the helper modules it names in
``Pass.code_modules()``) and ``config_dict()``, the versions of the
distributions in ``Pass.uses``, the target, input specs, dynamic dims, output
names, golden data and ``Pass.cache_facts(ctx)``. The build's other options are
deliberately *not* in the key: a pass receives everything it reads through its
``Config`` (filled by ``optpipe.builder.pass_configs``), so its config is its key, and a file named by a
config field is keyed by its content. Putting every option in every key would
make, say, a TensorRT timing cache that changes after each build invalidate the
export.

Layout under the cache directory (``$OPTPIPE_CACHE_DIR`` or
``~/.cache/optpipe``)::

    v1/entries/ab/abcdef.../record.json   # written last, inside the temp dir
    v1/entries/ab/abcdef.../files/<relative path in the build dir>
    v1/locks/abcdef....lock              # fcntl.flock, one per key, never deleted
    v1/tmp/<key>-<pid>-<random>/          # an entry being written

Safety: an entry is assembled in ``tmp/`` and renamed into ``entries/`` in
one ``rename``, so a killed build never leaves a complete-looking entry; a
per-key ``flock`` is held from the miss until the entry is stored, so two
concurrent builds of the same model compute each pass once and the second one
reuses it; a hit whose files do not match their recorded sha256 is discarded
with a warning and rebuilt. Any ``OSError`` on the cache directory (read-only,
full, not a directory) turns the cache off for the rest of the build with a
warning: the cache may make a build faster, never make it fail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from optpipe.cache.model_identity import ModelIdentity, array_digest, hash_array, model_identity, source_digest
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.machine import host_facts, package_version
from optpipe.core.tensor_spec import TensorSpec
from optpipe.infra.pass_base import BuildContext, Pass, PassResult

CACHE_FORMAT = 1
ENV_VAR = "OPTPIPE_CACHE_DIR"
STALE_TMP_SECONDS = 3600.0
_PATH_MARK = "__optpipe_relpath__"


#: Passes that measure: reused only when the artifact, golden data, runtimes and host are the same.
MEASUREMENTS = frozenset({"validate", "benchmark"})
#: Runtimes whose versions change a measurement.
RUNTIMES = ("onnxruntime", "torch", "numpy", "tensorrt")


def is_measurement(pass_: Pass) -> bool:
    return pass_.name in MEASUREMENTS


def default_cache_dir() -> Path:
    """``$OPTPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/optpipe``, else ``~/.cache/optpipe``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "optpipe"


# --------------------------------------------------------------------------- fingerprints


def golden_fingerprint(ctx: BuildContext) -> str | None:
    """Hash of the golden arrays (not the .npz bytes: zip entries carry timestamps)."""
    if ctx.golden is None:
        return None
    digest = hashlib.sha256()
    for case in ctx.golden.cases:
        digest.update(case.name.encode())
        for group in (case.inputs, case.outputs):
            for name in sorted(group):
                digest.update(name.encode())
                hash_array(digest, group[name])
    return digest.hexdigest()


def model_fingerprint(model: Any, example_inputs: Sequence[Any] = ()) -> str:
    """Hash of what a torch module computes (:func:`optpipe.cache.model_identity.model_identity`).

    The torch artifact that export reads has no file and no sha256; this stands in for it: the
    classes' source and the project modules they reach, every parameter and buffer (non-persistent
    ones too), each submodule's plain attributes, and the outputs of one forward pass on
    ``example_inputs``.
    """
    return model_identity(model, example_inputs).fingerprint


def plain_data(value: Any) -> Any:
    """JSON-able stand-in for a build option value; files and arrays by content."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = [plain_data(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256()
        hash_array(digest, value)
        return {"array": digest.hexdigest()}
    if isinstance(value, Path) or (isinstance(value, str) and len(value) < 4096 and os.path.isfile(value)):
        path = Path(value)
        if path.is_file():
            return {"file": str(value), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return plain_data(dataclasses.asdict(value))
    return repr(value)


def module_digests(modules: Sequence[ModuleType]) -> dict[str, str]:
    """sha256 of the source of each module: code a pass calls besides its own file.

    ``pass_code`` covers only the pass class's file; a precision pass's output
    is decided mostly by helpers (quantizer, guard, gate). The pass names them
    (:meth:`~optpipe.infra.pass_base.Pass.code_modules`), so this module knows no pass's helpers.
    """
    digests: dict[str, str] = {}
    for module in modules:
        source = getattr(module, "__file__", None)
        digests[module.__name__] = (hashlib.sha256(Path(source).read_bytes()).hexdigest()
                                    if source and os.path.isfile(source) else module.__name__)
    return digests


class _Same:
    """A reference to one object for a memo: weak where the type allows (no build kept alive), else strong."""

    def __init__(self, value: Any) -> None:
        try:
            self._ref: Callable[[], Any] = weakref.ref(value)
        except TypeError:  # tuples, None: held strongly (small: the example inputs)
            self._ref = lambda: value

    def holds(self, value: Any) -> bool:
        """True when ``value`` is the very object this refers to (and it is still alive)."""
        return self._ref() is value


class _Keyer:
    """Computes cache keys; remembers the expensive per-build fingerprints."""

    def __init__(self) -> None:
        # Memos are keyed by the objects themselves (held weakly where Python allows, compared with ``is``),
        # never by ``id()``: a freed object's id is reused (tuples of one size come from a free list), and
        # a PassCache reused across builds would then hand a model mutated in place its old identity.
        self._model: tuple[_Same, _Same, _Same, ModelIdentity] | None = None
        self._golden: tuple[_Same, str | None] | None = None

    def facts(self, pass_: Pass, artifact: Artifact, ctx: BuildContext) -> dict[str, Any]:
        if artifact.kind is ArtifactKind.TORCH:
            source = {"model": self.model(ctx.model, ctx.example_inputs, ctx)}
        else:
            source = {"sha256": artifact.sha256}
        if self._golden is None or not self._golden[0].holds(ctx.golden):
            self._golden = (_Same(ctx.golden), golden_fingerprint(ctx))
        facts = {
            "format": CACHE_FORMAT,
            "pass": pass_.name,
            "pass_code": source_digest(type(pass_)),
            "code": module_digests(pass_.code_modules()),
            "config": plain_data(pass_.config_dict()),
            "versions": {dist: package_version(dist) for dist in ("optpipe", *getattr(pass_, "uses", ()))},
            "input": source,
            "input_kind": artifact.kind.value,
            "precision": artifact.precision,
            "target": ctx.target.name,
            "input_specs": [spec.to_dict() for spec in ctx.input_specs],
            "output_names": list(ctx.output_names),
            "dynamic": [dim.to_dict() for dim in ctx.dynamic],
            "golden": self._golden[1],
            "machine": platform.machine(),
            "pass_facts": plain_data(pass_.cache_facts(ctx)) if hasattr(pass_, "cache_facts") else {},
        }
        if is_measurement(pass_):
            facts["measurement"] = {"model": self.model(ctx.model, ctx.example_inputs, ctx), "threads": ctx.threads,
                                    "host": host_facts(),
                                    "runtimes": {dist: package_version(dist) for dist in RUNTIMES}}
        return facts

    def model(self, model: Any, example_inputs: Sequence[Any], build: Any = None) -> str:
        """:func:`model_fingerprint` of ``model`` (``""`` for none), computed once per build, model and examples."""
        identity = self.identity(model, example_inputs, build)
        return identity.fingerprint if identity is not None else ""

    def identity(self, model: Any, example_inputs: Sequence[Any], build: Any = None) -> ModelIdentity | None:
        """The model's identity (its probe: one forward pass on ``example_inputs``), memoised per build.

        ``build`` is the build's context: a model mutated in place between two builds that share this
        cache is fingerprinted again (its state may have changed with the same object)."""
        if model is None:
            return None
        memo = self._model
        if memo is None or not (memo[0].holds(model) and memo[1].holds(example_inputs) and memo[2].holds(build)):
            memo = self._model = (_Same(model), _Same(example_inputs), _Same(build),
                                  model_identity(model, example_inputs))
        return memo[3]

    def key(self, facts: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- files


#: Written by the build itself while every pass runs (optpipe.builder.log): never part of a pass's result,
#: or a replayed entry would overwrite this build's log with another build's lines.
NOT_PASS_OUTPUT = frozenset({"build.log"})


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (size, mtime_ns, inode) of every file under ``root`` (but :data:`NOT_PASS_OUTPUT`)."""
    files: dict[str, tuple[int, int, int]] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath, filename)
            if path.parent == root and filename in NOT_PASS_OUTPUT:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return files


def copy_hashing(source: Path, destination: Path, chunk: int = 1 << 20) -> str:
    """Copy a file and return the sha256 of the bytes written (one read of the source)."""
    digest = hashlib.sha256()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(destination, "wb") as dst:
        while block := src.read(chunk):
            digest.update(block)
            dst.write(block)
    return digest.hexdigest()


def _encode_extra(value: Any, root: Path) -> Any:
    """Artifact ``extra`` values; absolute paths into the staging dir become relative markers."""
    if isinstance(value, dict):
        return {k: _encode_extra(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_extra(v, root) for v in value]
    if isinstance(value, str | Path):
        path = Path(value)
        if path.is_absolute() and path.is_relative_to(root):
            return {_PATH_MARK: path.relative_to(root).as_posix()}
        return str(value)
    return value


def _decode_extra(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {_PATH_MARK}:
            return str(_inside(root, value[_PATH_MARK], "artifact extra", allow_root=True))
        return {k: _decode_extra(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_extra(v, root) for v in value]
    return value


def _artifact_to_record(artifact: Artifact, root: Path) -> dict[str, Any] | None:
    path: str | None = None
    if artifact.path is not None:
        if not artifact.path.is_relative_to(root):
            return None  # outside the build: nothing we could copy back
        path = artifact.path.relative_to(root).as_posix()
    return {
        "kind": artifact.kind.value,
        "path": path,
        "sha256": artifact.sha256,
        "inputs": [s.to_dict() for s in artifact.inputs],
        "outputs": [s.to_dict() for s in artifact.outputs],
        "precision": artifact.precision,
        "producer": artifact.producer,
        "extra": _encode_extra(dict(artifact.extra), root),
    }


def _artifact_from_record(data: Mapping[str, Any], root: Path) -> Artifact:
    return Artifact(
        kind=ArtifactKind(data["kind"]),
        path=root / data["path"] if data["path"] is not None else None,
        sha256=data["sha256"],
        inputs=tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
        outputs=tuple(TensorSpec.from_dict(s) for s in data["outputs"]),
        precision=data["precision"],
        producer=data["producer"],
        extra=_decode_extra(data["extra"], root),
    )


class CorruptEntry(Exception):
    """A cache entry whose files or record do not match (caught inside this module)."""


def _remove_no_follow(path: Path) -> None:
    """Delete ``path``: a symlink itself (never its target), else the file or tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)  # rmtree does not descend into symlinked directories


def _refuse_symlinks(base: Path, subdirs: Sequence[str]) -> None:
    """The cache's own directories must be real directories: a symlink could lead reads and deletes out."""
    for sub in subdirs:
        path = base / sub if sub else base
        if path.is_symlink():
            raise OSError(errno.ELOOP, "is a symbolic link (optpipe does not follow links inside its cache)",
                          str(path))


def _check_no_symlinks(base: Path, entry: Path) -> None:
    """An entry, its prefix directory, ``files/`` or anything under it being a symlink makes it corrupt."""
    for path in (entry.parent, entry, entry / "record.json", entry / "files"):
        if path.is_symlink():
            raise CorruptEntry(f"{path.relative_to(base)} is a symbolic link")
    files = entry / "files"
    if files.is_dir():
        for path in files.rglob("*"):
            if path.is_symlink():
                raise CorruptEntry(f"{path.relative_to(base)} is a symbolic link")


def _inside(root: Path, relative: object, what: str, *, allow_root: bool = False) -> Path:
    """``root / relative`` for a record's relative path; CorruptEntry unless it stays inside ``root``.

    A record is data read from a shared directory: a path in it must never name a file outside
    the build (absolute, ``..``, or through a symlink), or a crafted entry could overwrite or
    delete anything the build's user can.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise CorruptEntry(f"a {what} path is not a non-empty string ({relative!r})")
    pure = Path(relative)
    if pure.is_absolute() or ".." in pure.parts or (not pure.parts and not allow_root):
        raise CorruptEntry(f"{what} path {relative!r} leaves the build directory")
    path = root / pure
    base = root.resolve()
    resolved = path.resolve()
    if (resolved == base and not allow_root) or not resolved.is_relative_to(base):
        raise CorruptEntry(f"{what} path {relative!r} leaves the build directory")
    return path


# --------------------------------------------------------------------------- the instrument


@dataclass
class _Pending:
    key: str
    before: dict[str, tuple[int, int, int]]
    lock_fd: int | None


class PassCache:
    """Pipeline instrument that skips cacheable passes whose output is already cached.

    ``log`` receives one line per hit, store and problem. Warnings (a corrupted
    entry, a cache that cannot be written) are also added to the next pass
    result, so they reach ``report.json``.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        lock_timeout: float = 3600.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.base = self.root / f"v{CACHE_FORMAT}"
        self.lock_timeout = lock_timeout
        self.log = log
        self.enabled = True
        self._keyer = _Keyer()
        self._pending: _Pending | None = None
        self._warnings: list[str] = []
        self._prepared = False
        self._said_nondeterministic = False

    # -- Instrument protocol ------------------------------------------------------------------------------

    def before_pass(self, pass_: Pass, artifact: Artifact, ctx: BuildContext) -> PassResult | None:
        """Return the cached result of ``pass_`` on ``artifact``, or None (and keep its key locked)."""
        try:
            return self._before_pass(pass_, artifact, ctx)
        except Exception as error:  # the cache may make a build faster, never make it fail
            self._release()
            self._disable(ctx, error)
            return None

    def after_pass(self, pass_: Pass, artifact: Artifact, result: PassResult, ctx: BuildContext) -> None:
        """Store the files ``pass_`` just made, then release the key's lock."""
        try:
            self._after_pass(pass_, artifact, result, ctx)
        except Exception as error:  # never fail a pass that ran because its result could not be cached
            self._release()
            self._disable(ctx, error)
            result.warnings.extend(self._take_warnings())

    def _before_pass(self, pass_: Pass, artifact: Artifact, ctx: BuildContext) -> PassResult | None:
        self._release()  # a previous pass that raised never reached after_pass
        measurement = is_measurement(pass_)
        if not self.enabled or not (getattr(pass_, "cacheable", False) or measurement):
            return None
        if measurement and not ctx.reuse_measurements:  # --rebench: measure again (and store the new result)
            self._say(ctx, f"     {pass_.name}: measuring again (--rebench)")
        if not self._prepare(ctx):
            return None
        try:
            key = self._keyer.key(self._keyer.facts(pass_, artifact, ctx))
        except Exception as error:  # a fingerprint we cannot compute: build without the cache
            self._warn(ctx, f"cache disabled for pass '{pass_.name}': cannot compute its key ({error})")
            return None
        try:
            lock_fd = self._lock(key, pass_.name, ctx)
        except OSError as error:
            self._disable(ctx, error)
            return None
        if lock_fd is None:
            return None
        try:
            result = self._load(key, pass_, ctx) if ctx.reuse_measurements or not measurement else None
        except Exception as error:  # OSError on the cache dir, or anything unexpected: no cache
            self._unlock(lock_fd)
            self._disable(ctx, error)
            return None
        if result is not None:
            with contextlib.suppress(OSError):  # "last used", for least-recently-used eviction (cache_admin)
                os.utime(self._entry(key))
            self._unlock(lock_fd)
            try:  # post-conditions hold for a replayed result too (int8 copies its ranges to --calib-cache)
                pass_.ensures(result, ctx)
            except Exception as error:
                self._warn(ctx, f"cached result of pass '{pass_.name}' failed its post-condition ({error}); "
                                "running the pass")
                return None
            if measurement:
                made = result.metrics["cached"]
                self._say(ctx, f"     {pass_.name}: reused the measurement of {made['measured_at']} on "
                               f"{(made['host'] or {}).get('node')} ({key[:12]}; --rebench measures again)")
            else:
                self._say(ctx, f"     {pass_.name}: reused from cache ({key[:12]})")
            result.warnings.extend(self._take_warnings())
            return result
        self._pending = _Pending(key, snapshot(ctx.work_dir), lock_fd)
        return None

    def _after_pass(self, pass_: Pass, artifact: Artifact, result: PassResult, ctx: BuildContext) -> None:
        pending, self._pending = self._pending, None
        try:
            if pending is not None and self.enabled:
                try:
                    self._store(pending, pass_, result, ctx)
                except OSError as error:
                    self._disable(ctx, error)
        finally:
            if pending is not None:
                self._unlock(pending.lock_fd)
        result.warnings.extend(self._take_warnings())

    def close(self) -> None:
        """Release a lock still held after a failed pass."""
        self._release()

    def __enter__(self) -> PassCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()

    # -- for other stores in the same directory (optpipe.cache.reference) ----------------------------------

    def usable(self, ctx: BuildContext) -> bool:
        """True when the cache directory is ready (created, no symlinks, writable); warns once and disables if not."""
        return self.enabled and self._prepare(ctx)

    def entry_path(self, key: str) -> Path:
        """The entry directory of ``key`` (``entries/ab/abcd...``): ``optpipe cache info/prune`` see every entry."""
        return self._entry(key)

    @contextlib.contextmanager
    def staged_entry(self, key: str) -> Iterator[Path]:
        """A new directory under ``tmp/`` to fill with an entry's files; removed on exit unless installed."""
        tmp = self.base / "tmp" / f"{key}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir(parents=True)
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def install_entry(self, tmp: Path, key: str, record: Mapping[str, Any]) -> None:
        """Write ``record.json`` into the staged ``tmp`` and rename it into place whole (one already there wins)."""
        (tmp / "record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, entry)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise  # EEXIST/ENOTEMPTY: a complete entry is already there

    def disable(self, ctx: BuildContext, error: Exception) -> None:
        """Stop using the cache for this build, with one warning saying why (a full disk, a read-only one)."""
        self._disable(ctx, error)

    def discard_entry(self, entry: Path) -> None:
        """Remove a corrupt entry (renamed out of ``entries/`` first)."""
        self._discard(entry)

    def model_fingerprint(self, model: Any, ctx: BuildContext) -> str:
        """:func:`model_fingerprint` of ``model`` on ``ctx``'s examples, once per build (shared with the pass keys)."""
        return self._keyer.model(model, ctx.example_inputs, ctx)

    def check_probe(self, model: Any, ctx: BuildContext, inputs: Sequence[np.ndarray],
                    outputs: Sequence[np.ndarray]) -> None:
        """Say once when ``model`` just computed other ``outputs`` than its probe did on the same ``inputs``.

        Such a model is nondeterministic: its fingerprint differs from build to build, so nothing it
        stores is reused (safe, but the user should know why the cache never hits).
        """
        identity = self._keyer.identity(model, ctx.example_inputs, ctx)
        if self._said_nondeterministic or identity is None or identity.probe_inputs != array_digest(inputs):
            return
        if identity.probe_outputs != array_digest(outputs):
            self._said_nondeterministic = True
            self._say(ctx, "     note: the model gave different outputs in two runs on the same example inputs "
                           "(nondeterministic); the cache will not reuse its results in later builds")

    # -- internals ----------------------------------------------------------------------------------------

    def _say(self, ctx: BuildContext, message: str) -> None:
        (self.log or ctx.log)(message)

    def _warn(self, ctx: BuildContext, message: str) -> None:
        self._say(ctx, f"     warning: {message}")
        self._warnings.append(message)

    def _take_warnings(self) -> list[str]:
        taken, self._warnings = self._warnings, []
        return taken

    def _disable(self, ctx: BuildContext, error: Exception) -> None:
        self.enabled = False
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            if error.errno == errno.ENOSPC:
                reason = "no space left on the device"
            self._warn(ctx, f"cache directory {self.root} cannot be used ({reason}); building without the cache")
        else:
            self._warn(ctx, f"cache failed unexpectedly ({type(error).__name__}: {error}); "
                            "building without the cache")

    def _prepare(self, ctx: BuildContext) -> bool:
        if self._prepared:
            return True
        try:
            for sub in ("entries", "locks", "tmp"):
                (self.base / sub).mkdir(parents=True, exist_ok=True)
            _refuse_symlinks(self.base, ("", "entries", "locks", "tmp"))
            probe = self.base / "tmp" / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            self._disable(ctx, error)
            return False
        self._prepared = True
        self._clean_stale_tmp()
        return True

    def _clean_stale_tmp(self) -> None:
        """Remove entries-in-progress left by killed builds (old enough that no build still writes them)."""
        now = time.time()
        with contextlib.suppress(OSError):
            tmp = self.base / "tmp"
            if tmp.is_symlink():  # never delete through a link out of the cache
                return
            for child in tmp.iterdir():
                with contextlib.suppress(OSError):
                    info = child.lstat()  # a symlink's own age; its target is never looked at
                    if now - info.st_mtime > STALE_TMP_SECONDS:
                        _remove_no_follow(child)

    def _entry(self, key: str) -> Path:
        return self.base / "entries" / key[:2] / key

    def _lock(self, key: str, name: str, ctx: BuildContext) -> int | None:
        """Take the key's exclusive lock; None (no cache for this pass) after ``lock_timeout``."""
        fd = os.open(self.base / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.lock_timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    self._warn(ctx, f"cache lock for '{name}' still held after {self.lock_timeout:.0f}s; "
                                    "running the pass without the cache")
                    return None
                if not said:
                    self._say(ctx, f"     {name}: another build is computing this pass; waiting for it")
                    said = True
                time.sleep(0.05)

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _release(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._unlock(pending.lock_fd)

    def _discard(self, entry: Path) -> None:
        """Move a bad entry out of ``entries/`` in one rename, then delete it."""
        trash = self.base / "tmp" / f"discard-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
        with contextlib.suppress(OSError):
            os.replace(entry, trash)
            _remove_no_follow(trash)

    def _load(self, key: str, pass_: Pass, ctx: BuildContext) -> PassResult | None:
        entry = self._entry(key)
        record_path = entry / "record.json"
        if not record_path.is_file() and not entry.is_symlink():
            return None
        written: list[Path] = []
        try:
            try:
                _check_no_symlinks(self.base, entry)
                record = json.loads(record_path.read_text(encoding="utf-8"))
                if not isinstance(record, dict):
                    raise CorruptEntry(f"record is a JSON {type(record).__name__}, not an object")
                if record.get("format") != CACHE_FORMAT or record.get("key") != key:
                    raise CorruptEntry("record does not match its key")
                files = record.get("files")
                deleted_raw = record.get("deleted", [])
                result = record.get("result")
                if not isinstance(files, list) or not all(isinstance(item, dict) for item in files):
                    raise CorruptEntry("its 'files' is not a list of objects")
                if not isinstance(deleted_raw, list):
                    raise CorruptEntry("its 'deleted' is not a list")
                if not isinstance(result, dict):
                    raise CorruptEntry("its 'result' is missing or not an object")
                modified, metrics, warnings = result.get("modified"), result.get("metrics"), result.get("warnings")
                if not isinstance(modified, bool) or not isinstance(metrics, dict) or not isinstance(warnings, list):
                    raise CorruptEntry("its 'result' lacks modified/metrics/warnings")
                if not isinstance(record.get("artifact"), dict):
                    raise CorruptEntry("its 'artifact' is missing or not an object")
                # Every path is checked before anything is copied or deleted.
                checked = [(_inside(entry / "files", item.get("path"), "file"),
                            _inside(ctx.work_dir, item.get("path"), "file"), item) for item in files]
                deleted = [_inside(ctx.work_dir, relative, "deleted file") for relative in deleted_raw]
                artifact_path = record["artifact"].get("path")
                if artifact_path is not None:
                    _inside(ctx.work_dir, artifact_path, "artifact")
                for source, destination, item in checked:
                    if not source.is_file():
                        raise CorruptEntry(f"{item['path']} is missing")
                    written.append(destination)
                    if copy_hashing(source, destination) != item.get("sha256"):
                        raise CorruptEntry(f"{item['path']} does not match its recorded sha256")
                artifact = _artifact_from_record(record["artifact"], ctx.work_dir)
                if artifact.path is not None and not artifact.path.exists():
                    raise CorruptEntry(f"its artifact {artifact_path} is not in the build")
                if is_measurement(pass_):  # a reused measurement says when and where it was made
                    metrics = {**metrics, "cached": {"measured_at": record.get("created"), "host": record.get("host"),
                                                     "key": key}}
                skipped = result.get("skipped")
                if skipped is not None and not isinstance(skipped, str):
                    raise CorruptEntry("its 'skipped' is not a string")
                loaded = PassResult(artifact, modified=modified, metrics=metrics,
                                    warnings=[str(w) for w in warnings], skipped=skipped)
            except (ValueError, KeyError, TypeError, AttributeError) as error:  # unreadable JSON or wrong shape
                raise CorruptEntry(f"unreadable record ({type(error).__name__}: {error})") from None
        except CorruptEntry as problem:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            self._discard(entry)
            self._warn(ctx, f"cache entry {key[:12]} for pass '{pass_.name}' was corrupted ({problem}); "
                            "discarded it and rebuilt")
            return None
        for path in deleted:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
        return loaded

    def _store(self, pending: _Pending, pass_: Pass, result: PassResult, ctx: BuildContext) -> None:
        root = ctx.work_dir
        artifact = _artifact_to_record(result.artifact, root)
        if artifact is None:
            return
        try:
            result_json = json.loads(json.dumps(
                {"modified": result.modified, "metrics": result.metrics, "warnings": list(result.warnings),
                 "skipped": result.skipped}  # a skip is an outcome too: replayed by raising VariantSkipped
            ))
        except (TypeError, ValueError):
            self._say(ctx, f"     {pass_.name}: metrics are not JSON; not cached")
            return
        after = snapshot(root)
        changed = sorted(rel for rel, stat in after.items() if pending.before.get(rel) != stat)
        deleted = sorted(rel for rel in pending.before if rel not in after)
        entry = self._entry(pending.key)
        if (entry / "record.json").is_file():
            return  # stored by a build that did not wait for our lock (lock timeout)
        if entry.exists():
            self._discard(entry)  # a directory without its record is not an entry (made by hand or a bug)
        with self.staged_entry(pending.key) as tmp:
            files = []
            for relative in changed:
                digest = copy_hashing(root / relative, tmp / "files" / relative)
                files.append({"path": relative, "sha256": digest, "size": (root / relative).stat().st_size})
            record = {
                "format": CACHE_FORMAT,
                "key": pending.key,
                "pass": pass_.name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": host_facts(),
                "files": files,
                "deleted": deleted,
                "artifact": artifact,
                "result": result_json,
            }
            self.install_entry(tmp, pending.key, record)


def iter_entries(directory: str | Path | None = None) -> Iterator[Path]:
    """Every complete entry directory of a cache (for tests and housekeeping)."""
    root = Path(directory) if directory is not None else default_cache_dir()
    base = root / f"v{CACHE_FORMAT}" / "entries"
    if base.is_dir():
        for record in sorted(base.glob("*/*/record.json")):
            yield record.parent

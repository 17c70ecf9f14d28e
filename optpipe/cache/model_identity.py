"""What a torch model computes, as one hash: the cache's identity of the model.

Why: every cached artifact (export, golden data, every later pass, every
measurement) is keyed on the model. A key over only ``state_dict`` and the
source of the model's classes published a stale artifact as PASSED when the
behaviour changed elsewhere: a JSON config read in ``__init__`` (as Hugging
Face models read ``config.json``), a constructor argument, a module-level
constant or a helper function in another file, a non-persistent buffer.

:func:`model_identity` hashes, besides the class names and their source files:

- **the probe**: the model's outputs on the build's example inputs, from one
  forward pass computed here (never from a cache), hashed exactly. Any change
  of behaviour on the example inputs changes it. A nondeterministic model gets
  a new identity each build: it never reuses, which is safe.
- every parameter and buffer, **non-persistent buffers included**
  (``named_buffers()``; ``state_dict`` leaves them out);
- the **non-tensor state** of every submodule: the plain values in its
  ``__dict__`` besides torch's own bookkeeping (an activation name, a float
  constant, a config object's fields, a tensor kept as a plain attribute);
- the **source of the project modules** the model's classes reach through
  their modules' globals (imports, imported functions, classes and objects),
  transitively, outside the standard library and installed packages. So a
  helper changed on a branch the example inputs do not reach still changes the
  identity;
- the **version of each installed package** that walk reaches (``timm``,
  ``transformers``, torch): their code changes with it.

What it cannot see: behaviour on inputs unlike the examples that depends on
something outside the project's source, the module's state and the package
versions (a file or an environment variable read inside ``forward()``, an
installed package edited in place). The static parts are cheap (tens of ms);
the probe costs one forward pass at the example batch per build.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import site
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np

#: How deep plain attributes are followed into containers and objects (a config object's fields).
_MAX_DEPTH = 4
#: Path components of installed packages: their code is keyed by their versions, not read here.
_INSTALLED = ("site-packages", "dist-packages")


@dataclass(frozen=True)
class ModelIdentity:
    """The model's fingerprint, and the parts a caller may compare on its own (the probe)."""

    fingerprint: str
    probe_inputs: str  # sha256 of the example inputs the probe ran on ("" when there were none)
    probe_outputs: str  # sha256 of the outputs the probe computed ("" when there was no probe)


def model_identity(model: Any, example_inputs: Sequence[Any] = ()) -> ModelIdentity:
    """Hash what ``model`` computes; ``example_inputs`` (tensors, ``forward()`` order) feed the probe.

    The static parts are hashed before the probe runs: a forward that changes the module's own
    state (a call counter) must not change what this build calls the model.
    """
    digest = hashlib.sha256()
    _hash_static(digest, model)
    probe_inputs, probe_outputs = _probe(model, example_inputs) if example_inputs else ("", "")
    digest.update(f"probe:{probe_inputs}:{probe_outputs}".encode())
    return ModelIdentity(digest.hexdigest(), probe_inputs, probe_outputs)


def _hash_static(digest: Any, model: Any) -> None:
    """Classes and their source, the project modules they reach, tensors and plain state of every submodule."""
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    classes = _model_classes(model)
    for name in sorted(classes):
        digest.update(name.encode())
        digest.update(source_digest(classes[name]).encode())
    code = project_code(_entry_scopes(model, classes.values()))
    for name, file_digest in sorted(code.sources.items()):
        digest.update(f"source:{name}:{file_digest}".encode())
    for dist, version in sorted(code.libraries.items()):
        digest.update(f"library:{dist}=={version}".encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(f"state:{key}".encode())
        _hash_value(digest, tensor, 0, set())
    for key, buffer in model.named_buffers(remove_duplicate=False):  # non-persistent ones too
        digest.update(f"buffer:{key}".encode())
        _hash_value(digest, buffer, 0, set())
    for key, module in model.named_modules(remove_duplicate=False):
        digest.update(f"module:{key}:{type(module).__qualname__}".encode())
        _hash_plain_state(digest, module)


def _probe(model: Any, example_inputs: Sequence[Any]) -> tuple[str, str]:
    """Digests of the example inputs and of the model's outputs on them, from one fresh forward pass."""
    import torch

    from optpipe.runtime.runners import flatten_outputs

    inputs = array_digest([_as_numpy(value) for value in example_inputs])
    fresh = tuple(v.clone() if isinstance(v, torch.Tensor) else v for v in example_inputs)  # forward may write
    with torch.random.fork_rng(devices=[]), torch.inference_mode():  # the probe leaves the RNG as it was
        raw = model(*fresh)
    return inputs, array_digest(flatten_outputs(raw))


def array_digest(arrays: Sequence[np.ndarray]) -> str:
    """sha256 over arrays in order, each by dtype, shape and exact bytes (the probe's comparison)."""
    digest = hashlib.sha256()
    for array in arrays:
        hash_array(digest, np.asarray(array))
    return digest.hexdigest()


def source_digest(cls: type) -> str:
    """sha256 of the file that defines ``cls`` (its qualified name when it has no readable file)."""
    try:
        source = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        source = None
    if source and os.path.isfile(source):
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return f"{cls.__module__}.{cls.__qualname__}"


def _model_classes(model: Any) -> dict[str, type]:
    """The classes of the model's modules, but torch's own layers (covered by torch's version)."""
    return {
        f"{c.__module__}.{c.__qualname__}": c
        for c in (type(module) for module in model.modules())
        if not c.__module__.startswith("torch.")
    }


# --------------------------------------------------------------------------- project sources


def _entry_scopes(model: Any, classes: Any) -> list[dict[str, Any]]:
    """Where the source walk starts: the modules of the model's classes and of functions kept as attributes."""
    scopes = [scope for cls in classes if (scope := _class_globals(cls)) is not None]
    skip = _torch_bookkeeping()
    for module in model.modules():
        for key, value in vars(module).items():
            if key not in skip and isinstance(value, FunctionType | MethodType):
                found = _globals_of(value)
                if found is not None:
                    scopes.append(found)
    return scopes


@dataclass(frozen=True)
class ProjectCode:
    """The code a model's classes reach: project files by content, installed packages by version."""

    sources: dict[str, str]  # module name -> sha256 of its file
    libraries: dict[str, str]  # distribution -> version (timm, transformers...: their code changes with it)


def project_code(scopes: Sequence[dict[str, Any]]) -> ProjectCode:
    """The project modules reachable from ``scopes`` (module globals), and the installed packages they reach.

    "Project" means a ``.py`` file outside the standard library, installed packages and optpipe
    itself (whose code each pass key holds). Followed transitively: every module, function, class
    or object a project module's globals name, and so on. A module of an installed package ends
    the walk there; its distribution's version is recorded instead.
    """
    roots = _library_roots()
    sources: dict[str, str] = {}
    reached: set[str] = set()
    pending = list(scopes)
    while pending:
        scope = pending.pop()
        name, path = str(scope.get("__name__", "")), scope.get("__file__")
        if name in sources:
            continue
        if not _is_project_file(name, path, roots):
            reached.add(name.partition(".")[0])
            continue
        sources[name] = hashlib.sha256(Path(str(path)).read_bytes()).hexdigest()
        for value in list(scope.values()):
            found = _globals_of(value)
            if found is not None and str(found.get("__name__", "")) not in sources:
                pending.append(found)
    return ProjectCode(sources, _versions(reached))


def _versions(top_level: set[str]) -> dict[str, str]:
    """Version of each installed top-level package reached (``__version__``, else its distribution's).

    Not ``importlib.metadata.packages_distributions()``: it reads every installed distribution
    (seconds on a loaded machine), on every build. A name with no version (the standard library)
    is left out.
    """
    from importlib import metadata

    versions: dict[str, str] = {}
    for name in sorted(top_level - {"", "optpipe", "builtins", "__main__"}):
        version = getattr(sys.modules.get(name), "__version__", None)
        if not isinstance(version, str) and name not in sys.stdlib_module_names:
            with contextlib.suppress(metadata.PackageNotFoundError, ValueError):
                version = metadata.version(name)
        if isinstance(version, str):
            versions[name] = version
    return versions


def _class_globals(cls: type) -> dict[str, Any] | None:
    """The globals of the module that defines ``cls`` (also when it is not in ``sys.modules``)."""
    module = sys.modules.get(cls.__module__)
    if module is not None:
        return vars(module)
    for value in vars(cls).values():
        if isinstance(value, FunctionType):
            return value.__globals__
    return None


def _globals_of(value: Any) -> dict[str, Any] | None:
    """The module globals that ``value`` (a module, function, class or any object) comes from."""
    if isinstance(value, ModuleType):
        return vars(value)
    if isinstance(value, MethodType):
        value = value.__func__
    if isinstance(value, FunctionType):
        return value.__globals__
    owner = value if isinstance(value, type) else type(value)
    module = sys.modules.get(getattr(owner, "__module__", "") or "")
    return vars(module) if module is not None else None


def _library_roots() -> tuple[str, ...]:
    """Directories whose code is not the project's: the standard library and installed packages."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(getattr(site, "getsitepackages", list)())
    roots.add(site.getusersitepackages())
    return tuple(os.path.realpath(root) + os.sep for root in roots if root)


def _is_project_file(name: str, path: Any, roots: tuple[str, ...]) -> bool:
    if not name or name == "optpipe" or name.startswith("optpipe.") or not isinstance(path, str):
        return False
    if not path.endswith(".py") or not os.path.isfile(path):
        return False
    real = os.path.realpath(path)
    return not real.startswith(roots) and not any(part in _INSTALLED for part in Path(real).parts)


# --------------------------------------------------------------------------- plain state


@functools.cache
def _torch_bookkeeping() -> frozenset[str]:
    """The ``__dict__`` keys every ``nn.Module`` has (parameters, buffers, hooks, ``training``...)."""
    import torch

    return frozenset(vars(torch.nn.Module()))


def _hash_plain_state(digest: Any, module: Any) -> None:
    """Hash the attributes of ``module`` that are not torch's bookkeeping (tensors there are hashed too)."""
    skip = _torch_bookkeeping()
    for key in sorted(k for k in vars(module) if k not in skip):
        digest.update(f"attr:{key}".encode())
        _hash_value(digest, vars(module)[key], 0, set())


def _hash_value(digest: Any, value: Any, depth: int, seen: set[int]) -> None:
    """Hash a plain value by content; an object that has no stable content is hashed by its type only."""
    import torch

    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, torch.Tensor):
        hash_array(digest, _as_numpy(value))
    elif isinstance(value, np.ndarray | np.generic):
        hash_array(digest, np.asarray(value))
    elif isinstance(value, torch.nn.Module):  # submodules are hashed in their own right
        digest.update(f"module:{type(value).__qualname__}".encode())
    elif isinstance(value, FunctionType | MethodType | type) or (callable(value) and hasattr(value, "__qualname__")):
        digest.update(f"callable:{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}".encode())
    elif not isinstance(value, list | tuple | set | frozenset | dict) and not hasattr(value, "__dict__"):
        text = repr(value)  # a dtype, a device: its repr; never an address, which changes every run
        digest.update(f"object:{type(value).__qualname__}:{'' if ' at 0x' in text else text}".encode())
    elif depth >= _MAX_DEPTH or id(value) in seen:
        digest.update(f"object:{type(value).__qualname__}".encode())
    else:
        _hash_container(digest, value, depth, seen | {id(value)})


def _hash_container(digest: Any, value: Any, depth: int, seen: set[int]) -> None:
    """Lists, tuples, sets and dicts by their items; other objects by their ``__dict__`` (a config object)."""
    digest.update(f"[{type(value).__qualname__}".encode())
    if isinstance(value, list | tuple):
        for item in value:
            _hash_value(digest, item, depth + 1, seen)
    elif isinstance(value, set | frozenset):
        for item in sorted(value, key=repr):
            _hash_value(digest, item, depth + 1, seen)
    elif isinstance(value, dict) or hasattr(value, "__dict__"):
        items = value if isinstance(value, dict) else vars(value)
        for key in sorted(items, key=repr):
            digest.update(f"{key!r}=".encode())
            _hash_value(digest, items[key], depth + 1, seen)
    digest.update(b"]")


def _as_numpy(value: Any) -> np.ndarray:
    """A tensor's exact values as a numpy array (bfloat16 and other dtypes numpy lacks: by their bytes)."""
    import torch

    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    tensor = value.detach().cpu().contiguous()
    try:
        return tensor.numpy()
    except TypeError:  # no numpy dtype (bfloat16, float8): the raw bytes, tagged with torch's dtype
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        return np.frombuffer(f"{tensor.dtype}{tuple(tensor.shape)}".encode() + raw.tobytes(), dtype=np.uint8)


def hash_array(digest: Any, value: np.ndarray) -> None:
    """Feed one array to ``digest``: dtype, shape and exact bytes."""
    array = np.ascontiguousarray(value)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())

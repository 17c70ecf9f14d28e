"""Turn a user's model spec (and optional weights file) into an ``nn.Module`` in eval mode.

Accepted model specs:

* ``path/to/file.py:NAME`` - the file is imported under a unique module name with
  its directory temporarily on ``sys.path``, so ``from layers import Block`` next
  to it works;
* ``package.module:NAME`` - imported with :func:`importlib.import_module`;
* ``model.pt2`` - a program saved with ``torch.export.save``;
* ``model.pt`` / ``model.pth`` holding a whole pickled module (``torch.save(model)``) -
  only with ``trust_pickle=True`` (``--trust-pickle``), because unpickling runs
  arbitrary code from the file.

``NAME`` is an ``nn.Module`` subclass constructible without arguments, a function
returning an ``nn.Module`` (a "factory"), or a module-level ``nn.Module`` instance.

The model file may also define ``example_inputs()``, ``calibration_data()``,
``eval_data()``, ``INPUT_NAMES`` and ``OUTPUT_NAMES``; later passes find them on
:attr:`LoadedModel.source_module`.

Every mistake a user can make here raises :class:`UserInputError` with one line
saying what is wrong and how to fix it. torch is imported inside functions so
that importing this module (and ``optpipe --help``) does not need it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import itertools
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

from optpipe.core.artifact import sha256_file
from optpipe.core.errors import UserInputError, first_line

if TYPE_CHECKING:
    import torch

TRUST_PICKLE_FLAG = "--trust-pickle"
NON_STRICT_WEIGHTS_FLAG = "--no-strict-weights"
PICKLE_SUFFIXES = (".pt", ".pth")
EXPORTED_SUFFIXES = (".pt2",)
SPEC_USAGE = "use path/to/file.py:NAME, package.module:NAME or a torch.export .pt2 file"
_MAX_LISTED = 5
_module_counter = itertools.count()
_MODULE_PREFIX = "optpipe_user_model_"  # model files' module names: the prefix, a counter, the file's stem


@dataclass
class LoadedModel:
    """A loaded model and where it came from.

    ``source_module`` is the imported Python module that defined the model (``None``
    for ``.pt2`` and pickled models); ``program_example_inputs`` are the example
    inputs stored in a ``.pt2`` program, if any; ``weights_sha256`` hashes the file
    that supplied the weights (``--weights``, or the ``.pt2`` / pickle itself).
    """

    module: torch.nn.Module
    source_module: ModuleType | None
    spec: str
    weights_sha256: str | None = None
    program_example_inputs: tuple[Any, ...] | None = None
    program_input_names: tuple[str, ...] | None = None


class ExampleInputs(NamedTuple):
    """Example tensors in ``forward()`` order and one name per tensor."""

    tensors: tuple[torch.Tensor, ...]
    names: tuple[str, ...]


# --- helpers -----------------------------------------------------------------------------------


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """Comma-join at most ``limit`` items, saying how many were left out."""
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f" (+{len(items) - limit} more)"
    return shown


def _a(noun: str) -> str:
    """``a`` or ``an`` before a type name, so messages read naturally ("an int")."""
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise UserInputError(f"{what} '{path}' does not exist; check the path")
    if not path.is_file():
        raise UserInputError(f"{what} '{path}' is not a file")


@contextlib.contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    """Put ``directory`` first on ``sys.path`` for the duration, so sibling imports resolve."""
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _import_file(path: Path) -> ModuleType:
    """Import a ``.py`` file under a fresh, unique module name.

    A unique name means two model files called ``model.py`` never collide, and
    loading the same file twice gives a fresh module. The module is registered in
    ``sys.modules`` because dataclasses and pickling look classes up there.
    """
    name = f"{_MODULE_PREFIX}{next(_module_counter)}_{path.resolve().stem}".replace("-", "_")
    return import_python_file(path, name, what="the model file")


def import_python_file(path: Path, name: str, *, keep: bool = True, what: str = "the file") -> ModuleType:
    """Run the Python file ``path`` as module ``name``, its folder first on ``sys.path`` meanwhile.

    ``keep``: the module stays in ``sys.modules`` (a model's classes are looked up there); a failure of the
    user's code, an exit included, is a one-line :class:`UserInputError` naming ``what`` was imported.
    """
    resolved = path.resolve()
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UserInputError(f"cannot import '{path}' as Python code; {what} must end in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(resolved.parent):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise UserInputError(f"importing {path} failed: {first_line(exc)}") from exc
    if not keep:
        sys.modules.pop(name, None)
    return module


def imported_model_file(path: Path) -> ModuleType | None:
    """The module this process last imported from model file ``path`` (:func:`_import_file`), or None.

    Why: the model file's ``calibration_data()`` is read by the INT8 passes through a ``FILE.py:NAME`` spec;
    importing the file again would run it again: build the model a second time (BERT 1536 x 20: 2.4 GB and
    seconds of weight initialisation, or a trained checkpoint read again from disk) only to call one function.
    """
    resolved = path.resolve()
    found = [module for name, module in list(sys.modules.items())
             if name.startswith(_MODULE_PREFIX) and Path(getattr(module, "__file__", "") or "").resolve() == resolved]
    return found[-1] if found else None


def _import_dotted(module_name: str) -> ModuleType:
    """Import ``package.module``, telling a missing module apart from one that raises."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UserInputError(
                f"cannot import module '{module_name}' (no module named '{missing}'); "
                f"give a file path like path/to/model.py:NAME, or install/add the package to PYTHONPATH"
            ) from exc
        raise UserInputError(f"importing {module_name} failed: {first_line(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise UserInputError(f"importing {module_name} failed: {first_line(exc)}") from exc


def _candidates(module: ModuleType) -> list[str]:
    """Names in ``module`` that could be a model: nn.Module classes/instances and functions defined there."""
    import torch

    found: list[str] = []
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        if inspect.isclass(value):
            if issubclass(value, torch.nn.Module) and value.__module__ == module.__name__:
                found.append(attr)
        elif isinstance(value, torch.nn.Module) or (
            inspect.isfunction(value)
            and value.__module__ == module.__name__
            and attr not in {"example_inputs", "calibration_data", "eval_data"}
        ):
            found.append(attr)
    return found


def _available(module: ModuleType) -> str:
    names = _candidates(module)
    if not names:
        return "it defines no nn.Module classes or functions"
    return f"available: {_listing(names, limit=10)}"


def _required_params(func: Any) -> list[str] | None:
    """Names of parameters a call with no arguments would be missing; ``None`` if unknown."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _instantiate(obj: Any, name: str, origin: str) -> torch.nn.Module:
    """Build the model from the object ``NAME`` refers to, with a specific error for each misuse."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if inspect.isclass(obj):
        if not issubclass(obj, torch.nn.Module):
            raise UserInputError(
                f"'{name}' in {origin} is a class but not a torch.nn.Module subclass; "
                f"name an nn.Module class or a function that returns one"
            )
        required = _required_params(obj)
        if required:
            raise UserInputError(
                f"{name}() needs constructor arguments ({', '.join(required)}) but optpipe builds the "
                f"model with none; give them defaults, or add a function such as "
                f"'def make_model(): return {name}(...)' and use ':make_model'"
            )
        try:
            return obj()
        except (Exception, SystemExit) as exc:  # a model may call sys.exit()
            raise UserInputError(f"constructing {name}() from {origin} failed: {first_line(exc)}") from exc
    if callable(obj):
        required = _required_params(obj)
        if required:
            raise UserInputError(
                f"{name}() needs arguments ({', '.join(required)}) but optpipe calls it with none; "
                f"give them defaults or wrap it in a function without parameters"
            )
        try:
            result = obj()
        except (Exception, SystemExit) as exc:
            raise UserInputError(f"calling {name}() from {origin} failed: {first_line(exc)}") from exc
        if not isinstance(result, torch.nn.Module):
            raise UserInputError(
                f"{name}() in {origin} returned {type(result).__name__}, not a torch.nn.Module; "
                f"it must return the model"
            )
        return result
    raise UserInputError(
        f"'{name}' in {origin} is {_a(type(obj).__name__)}, not an nn.Module class, a function "
        f"returning one, or an nn.Module instance"
    )


def _resolve_attr(module: ModuleType, name: str, origin: str) -> Any:
    """Look up ``NAME`` (dots allowed, e.g. ``Models.Small``) in the imported module."""
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserInputError(f"{origin} has no '{name}'; {_available(module)}")
        obj = getattr(obj, part)
    return obj


# --- weights -----------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save``d dict, never unpickling code."""
    import pickle

    import torch

    _require_file(path, "weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:
            raise UserInputError(f"{path} is not a valid safetensors file: {first_line(exc)}") from exc
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UserInputError(
            f"{path} is not a plain state dict (it holds pickled Python objects, e.g. a whole model); "
            f"save the weights with torch.save(model.state_dict(), '{path.name}') or as .safetensors"
        ) from exc
    except Exception as exc:
        raise UserInputError(f"{path} could not be read as PyTorch weights: {first_line(exc)}") from exc
    if isinstance(data, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise UserInputError(
            f"{path} holds {_a(type(data).__name__)} that is not a state dict (names -> tensors); "
            f"save it with torch.save(model.state_dict(), '{path.name}')"
        )
    return dict(data)


def _apply_weights(module: torch.nn.Module, path: Path, strict: bool) -> None:
    """Load ``path`` into ``module``, reporting mismatches by name before torch does.

    torch's own message is a multi-line dump; ours names the first few missing keys,
    unexpected keys and shape mismatches on one line. Shape mismatches are errors
    even when not strict, because loading cannot proceed past them.
    """
    state = _read_state_dict(path)
    expected = module.state_dict()
    prefix = "module."  # written by nn.DataParallel / DDP checkpoints
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        state = {k[len(prefix) :]: v for k, v in state.items()}

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} expected {tuple(expected[k].shape)} got {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems: list[str] = []
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        hint = (
            f" (pass {NON_STRICT_WEIGHTS_FLAG} to ignore missing/unexpected keys)" if not mismatched else ""
        )
        raise UserInputError(
            f"weights in {path} do not match {type(module).__name__}: {'; '.join(problems)}{hint}"
        )
    try:
        module.load_state_dict(state, strict=strict)
    except Exception as exc:
        raise UserInputError(f"loading weights from {path} failed: {first_line(exc)}") from exc


# --- loaders for each spec form ----------------------------------------------------------------


class PickleRefused(UserInputError):
    """A ``.pt2`` part can only be read by unpickling arbitrary objects, and the file is not trusted."""


@contextlib.contextmanager
def _no_unpickling(path: Path, trust_pickle: bool) -> Iterator[None]:
    """While ``torch.export.load`` runs: every ``torch.load`` is weights-only, raw unpickling is refused.

    torch 2.13 reads a ``.pt2``'s sample inputs, and weights/constants marked ``use_pickle``,
    with ``weights_only=False`` (and ScriptObject constants with ``pickle.loads``): a crafted
    archive runs code. Tensors, dicts and tuples load fine weights-only; anything else needs
    ``--trust-pickle``. torch's own logging (a traceback when its weights-only attempt fails)
    is silenced: the error is one line.
    """
    import logging
    import pickle
    import types

    import torch
    from torch.export.pt2_archive import _package

    if trust_pickle:
        yield
        return
    original_load, original_pickle, original_obj = torch.load, _package.pickle, torch._C._pickle_load_obj

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PickleRefused(
            f"{path} holds pickled Python objects, and loading them runs code from the file; "
            f"if you trust its source pass {TRUST_PICKLE_FLAG}"
        )

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original_load(*args, **kwargs)
        except pickle.UnpicklingError:
            refuse()

    loggers = [logging.getLogger(name) for name in ("torch", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    torch.load = weights_only_load  # restored below
    _package.pickle = types.SimpleNamespace(loads=refuse)  # type: ignore[assignment]
    torch._C._pickle_load_obj = refuse
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        torch.load, _package.pickle, torch._C._pickle_load_obj = original_load, original_pickle, original_obj
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_exported(
    path: Path, trust_pickle: bool = False
) -> tuple[torch.nn.Module, tuple[Any, ...] | None, tuple[str, ...]]:
    import torch

    try:
        with _no_unpickling(path, trust_pickle), contextlib.redirect_stderr(io.StringIO()):
            program = torch.export.load(path)
    except UserInputError:
        raise
    except Exception as exc:
        refused = _refusal_in(exc)
        if refused is not None:
            raise refused from None
        raise UserInputError(
            f"{path} is not a valid torch.export program (.pt2): {first_line(exc)}; "
            f"save one with torch.export.save(torch.export.export(model, args), '{path.name}')"
        ) from exc
    examples: tuple[Any, ...] | None = None
    stored = getattr(program, "example_inputs", None)
    if stored is not None:
        args, kwargs = stored
        if not kwargs:
            examples = tuple(args)
    names = tuple(program.graph_signature.user_inputs)
    return program.module(), examples, tuple(str(n) for n in names)


def _refusal_in(error: BaseException) -> PickleRefused | None:
    """torch may wrap our refusal in its own error; find it in the cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, PickleRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _load_pickled(path: Path, trust_pickle: bool) -> torch.nn.Module:
    """Load ``torch.save(model)``; refuse unless trusted, since unpickling executes code."""
    import pickle

    import torch

    # A weights-only load is safe; it tells a state dict passed by mistake apart from a model.
    try:
        safe = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        safe = None
    except Exception as exc:
        raise UserInputError(f"{path} could not be read as a PyTorch file: {first_line(exc)}") from exc
    if isinstance(safe, Mapping):
        raise UserInputError(
            f"{path} holds weights (a state dict), not a model; pass the model code as "
            f"file.py:NAME and this file with --weights {path}"
        )
    if not trust_pickle:
        raise UserInputError(
            f"{path} is a pickled PyTorch model, and loading it runs arbitrary code from the file; "
            f"if you trust its source pass {TRUST_PICKLE_FLAG}, otherwise pass the model code as "
            f"file.py:NAME with --weights holding torch.save(model.state_dict(), ...)"
        )
    try:
        model = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:
        raise UserInputError(
            f"unpickling {path} failed: {first_line(exc)}; the code defining the model's classes must be "
            f"importable (run from its directory), or pass file.py:NAME with --weights instead"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise UserInputError(f"{path} holds {_a(type(model).__name__)}, not a torch.nn.Module")
    return model


def _split_spec(spec: str) -> tuple[str, str]:
    """Split ``TARGET:NAME`` at the last colon (so ``C:\\models\\m.py:Net`` works too)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.strip() or name.strip() in {"/", "\\"}:
        suffix = ""
        path = Path(spec.rstrip(":"))
        if path.suffix == ".py" and path.is_file():
            module = _import_file(path)
            suffix = f"; {_available(module)}"
        raise UserInputError(f"model spec '{spec}' does not name the model after ':' ({SPEC_USAGE}){suffix}")
    return target, name.strip()


def load_model(
    spec: str,
    *,
    weights: Path | None = None,
    strict: bool = True,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load the model named by ``spec``, apply ``weights`` if given, and put it in eval mode.

    Raises :class:`UserInputError` (one line, exit code 2) for every problem the
    user can fix: a missing file, an unknown NAME (listing the candidates), a class
    that needs arguments, a file that raises on import, mismatching weights, an
    untrusted pickle.
    """
    import torch

    spec = spec.strip()
    weights = Path(weights) if weights is not None else None
    source_module: ModuleType | None = None
    program_examples: tuple[Any, ...] | None = None
    program_names: tuple[str, ...] | None = None
    sha: str | None = None
    path = Path(spec)

    if path.suffix in EXPORTED_SUFFIXES:
        _require_file(path, "exported program")
        module, program_examples, program_names = _load_exported(path, trust_pickle)
        sha = sha256_file(path)
    elif path.suffix in PICKLE_SUFFIXES:
        _require_file(path, "model file")
        module = _load_pickled(path, trust_pickle)
        sha = sha256_file(path)
    elif path.suffix in {".safetensors", ".onnx", ".engine", ".plan"}:
        raise UserInputError(
            f"model spec '{spec}' is a {path.suffix} file, but optpipe needs the PyTorch model "
            f"({SPEC_USAGE}); weights files go to --weights"
        )
    else:
        target, name = _split_spec(spec)
        is_file = target.endswith(".py") or "/" in target or "\\" in target
        if is_file:
            file_path = Path(target)
            _require_file(file_path, "model file")
            if file_path.suffix != ".py":
                raise UserInputError(f"model file '{file_path}' must be a .py file ({SPEC_USAGE})")
            source_module = _import_file(file_path)
        else:
            source_module = _import_dotted(target)
        origin = target
        obj = _resolve_attr(source_module, name, origin)
        module = _instantiate(obj, name, origin)

    if weights is not None:
        _apply_weights(module, weights, strict)
        sha = sha256_file(weights)

    if path.suffix not in EXPORTED_SUFFIXES:
        # Exported programs refuse .eval(); they keep the mode they were exported in.
        module.eval()
    assert isinstance(module, torch.nn.Module)
    return LoadedModel(
        module=module,
        source_module=source_module,
        spec=spec,
        weights_sha256=sha,
        program_example_inputs=program_examples,
        program_input_names=program_names,
    )


# --- example inputs ----------------------------------------------------------------------------


def forward_parameters(module: torch.nn.Module) -> tuple[list[str], list[str], bool]:
    """``(all positional names, required names, accepts *args)`` of ``module.forward``."""
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return [], [], True
    positional: list[str] = []
    required: list[str] = []
    var_args = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            var_args = True
        elif param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional.append(param.name)
            if param.default is inspect.Parameter.empty:
                required.append(param.name)
    return positional, required, var_args


def _to_tensor_tuple(value: Any, where: str) -> tuple[tuple[Any, ...], tuple[str, ...] | None]:
    """Normalise a tensor / tuple / list / dict to tensors (and names for a dict)."""
    import torch

    if isinstance(value, torch.Tensor):
        items: tuple[Any, ...] = (value,)
        names: tuple[str, ...] | None = None
    elif isinstance(value, (tuple, list)):
        items, names = tuple(value), None
    elif isinstance(value, Mapping):
        names = tuple(str(k) for k in value)
        items = tuple(value.values())
    else:
        raise UserInputError(
            f"{where} returned {_a(type(value).__name__)}; return a tensor, a tuple/list of tensors "
            f"in forward() order, or a dict name -> tensor"
        )
    for index, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            label = f"'{names[index]}'" if names else f"item {index}"
            raise UserInputError(f"{where}: {label} is {_a(type(item).__name__)}, not a torch.Tensor")
    return items, names


def find_example_inputs(loaded: LoadedModel) -> ExampleInputs | None:
    """Example inputs from the model file's ``example_inputs()`` or the ``.pt2`` program.

    Returns ``None`` when neither exists (the user must then pass ``--input``).
    Names come from the file's ``INPUT_NAMES``, else a dict's keys, else the
    ``forward()`` parameter names. A dict is put in ``forward()`` order; one that
    skips a parameter is refused, because passing it positionally would feed a
    tensor to the wrong argument.
    """
    source = loaded.source_module
    examples_fn = getattr(source, "example_inputs", None) if source is not None else None
    if examples_fn is not None:
        where = f"example_inputs() in {loaded.spec}"
        if not callable(examples_fn):
            raise UserInputError(f"{where.replace('()', '')} must be a function returning the inputs")
        try:
            value = examples_fn()
        except (Exception, SystemExit) as exc:
            raise UserInputError(f"calling {where} failed: {first_line(exc)}") from exc
        tensors, dict_names = _to_tensor_tuple(value, where)
    elif loaded.program_example_inputs is not None:
        where = f"the example inputs stored in {loaded.spec}"
        tensors, dict_names = _to_tensor_tuple(loaded.program_example_inputs, where)
    else:
        return None

    positional, required, var_args = forward_parameters(loaded.module)
    if loaded.program_input_names:
        positional = list(loaded.program_input_names)
    if dict_names is not None and not var_args:
        unknown = [n for n in dict_names if n not in positional]
        if unknown:
            raise UserInputError(
                f"{where}: keys {_listing(unknown)} are not forward() parameters ({_listing(positional)})"
            )
        ordered = [n for n in positional if n in dict_names]
        # A skipped parameter with a default keeps it: the inputs are then bound by name (optpipe.model.input_binding).
        before_last = positional[: positional.index(ordered[-1])] if ordered else []
        skipped = next((n for n in before_last if n not in dict_names), None)
        if skipped is not None and (loaded.program_input_names or skipped in required):
            raise UserInputError(
                f"{where}: the dict skips forward() parameter '{skipped}', which has no default, but gives "
                f"later ones; include '{skipped}' or return a tuple in forward() order"
            )
        by_name = dict(zip(dict_names, tensors, strict=True))
        tensors, dict_names = tuple(by_name[n] for n in ordered), tuple(ordered)

    declared = getattr(source, "INPUT_NAMES", None) if source is not None else None
    if declared is not None:
        names = tuple(str(n) for n in declared)
        if len(names) != len(tensors):
            raise UserInputError(
                f"INPUT_NAMES in {loaded.spec} has {len(names)} names but there are {len(tensors)} "
                f"example inputs; give one name per input"
            )
    elif dict_names is not None:
        names = dict_names
    else:
        names = tuple(positional[i] if i < len(positional) else f"input_{i}" for i in range(len(tensors)))
    if len(set(names)) != len(names):
        raise UserInputError(f"input names must be unique, got: {', '.join(names)}")
    return ExampleInputs(tensors=tuple(tensors), names=names)


def check_inputs_against_model(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    names: Sequence[str] | None = None,
) -> Any:
    """Run one forward pass to prove the inputs fit the model; return its outputs.

    Fails early with one line instead of letting the exporter fail minutes later
    with a long trace. The input count is checked first against ``forward()``'s
    parameters, which gives a clearer message than torch's ``TypeError``.
    """
    import torch

    from optpipe.model.input_binding import keyword_names

    positional, required, var_args = forward_parameters(module)
    count = len(inputs)
    keywords = keyword_names(module, names) if names is not None and len(names) == count else None
    if keywords is None and (count < len(required) or (not var_args and count > len(positional))):
        expected = (
            f"{len(required)}"
            if len(required) == len(positional)
            else f"{len(required)} to {len(positional)}"
        )
        raise UserInputError(
            f"the model's forward() takes {expected} input{'' if expected == '1' else 's'} "
            f"({', '.join(positional)}) but {count} were given; "
            f"pass one --input per forward() parameter, in order"
        )
    try:
        with torch.no_grad():  # inputs named after forward() parameters are bound to them by name
            return module(**dict(zip(keywords, inputs, strict=True))) if keywords else module(*inputs)
    except (Exception, SystemExit) as exc:  # a model may call sys.exit()
        labels = names if names is not None and len(names) == count else [f"#{i}" for i in range(count)]
        described = ", ".join(
            f"{label}: {str(t.dtype).replace('torch.', '')}{list(t.shape)}"
            if isinstance(t, torch.Tensor)
            else f"{label}: {type(t).__name__}"
            for label, t in zip(labels, inputs, strict=True)
        )
        raise UserInputError(
            f"the model rejected the inputs: {first_line(exc)} (inputs: {described})"
        ) from exc

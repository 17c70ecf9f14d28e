"""``optpipe build -c optpipe.toml``: builds described in a file, for CI.

Why a file: a CI job builds several models, each with its own inputs,
dynamic ranges, precisions and tolerances; a file in the repository is
reviewed and versioned, a long command line in a YAML job is not.

Schema: top-level keys are defaults for every model; each ``[[model]]`` table
is one build (one output directory, its ``out``). The keys are the
``optpipe build`` options, spelled as on the command line without the leading
dashes and with ``_`` for ``-`` (``dynamic``, ``output_names``, ``no_benchmark``,
``opt_level``, ``calib_data``...). The field list is *derived from the click
command*, so every flag, including ones added later, can be written in the
file with the same meaning and the same checks. A few friendlier spellings
are accepted: ``spec`` (the MODEL argument), ``inputs``, ``precisions`` (a
list), ``tolerances`` (a table ``{output = {field = value}}``),
``benchmark = false`` and ``strict_weights = false``. Command-level keys
(``cache``, ``cache_dir``, ``junit``) are allowed at the top level only.

Per-pass options: a ``[model.passes.<pass>]`` table (after its ``[[model]]``)
sets fields of that pass's ``Config`` (``optpipe passes`` lists the passes;
e.g. ``[model.passes.simplify] atol = 1e-3``), and a top-level
``[passes.<pass>]`` table sets them for every model. They are checked like
the flags (unknown pass, unknown field, wrong type: the error names the field
path) and reach ``build(pass_options=...)``.

Precedence: an option given on the command line > the model's table > the
top-level defaults > the option's default. A flag and the pass field it sets
(``calib_method`` and ``passes.int8.method``, ``exporter`` and
``passes.export.exporter``...; :func:`optpipe.infra.pass_options.flag_fields`) are
one option for this rule: a flag on the command line beats both spellings in
the file, a model's ``calib_method`` beats a top-level ``[passes.int8]
method``, and setting both spellings in the same table is an error. Relative
paths are relative to the file's directory, so a build does not depend on
where CI runs it from.

Every error names the file, the field and what was expected, and is found
before any build starts (exit 2).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from optpipe.core.errors import UserInputError
from optpipe.core.safe_output import OutputGuard, output_refusal, read_input_bytes, resolved
from optpipe.matrix.tasks import SEVERITY, ModelRunner, ModelTask, worst_exit_code

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Friendly spelling -> (click parameter name, negate the boolean).
ALIASES: dict[str, tuple[str, bool]] = {
    "spec": ("model", False),
    "inputs": ("inputs", False),
    "input": ("inputs", False),
    "dynamic": ("dynamics", False),
    "precisions": ("precision", False),
    "tolerances": ("tolerances", False),
    "tolerance": ("tolerances", False),
    "output_kind": ("output_kinds", False),
    "out": ("out_dir", False),
    "batch": ("benchmark_batch", False),
    "benchmark": ("no_benchmark", True),
    "strict_weights": ("no_strict_weights", True),
    "cache": ("no_cache", True),
    "json": ("as_json", False),
}
# -c FILE --json: the build command appends its report dict to ctx.meta[JSON_SINK] instead of printing it.
JSON_SINK = "optpipe.json_reports"
# The config file being built (an input: no output option may name it).
CONFIG_META = "optpipe.matrix.config_file"
BUILD_FILE_SCHEMA = "optpipe.build-file/1"
# Options of the whole command, not of one model.
COMMAND_LEVEL = frozenset({"no_cache", "cache_dir", "junit", "as_json", "executor"})
# Never read from a file.
NOT_IN_FILE = frozenset({"config_file"})
__all__ = ["SEVERITY", "ConfigError", "load_build_file", "run_build_file", "tasks_from_file", "worst_exit_code"]


class ConfigError(UserInputError):
    """A config file problem; the message names the file and the field (exit 2)."""

    #: The file's top-level ``junit`` when it was read before the error (so the error can still be reported).
    junit: Any = None


@dataclass
class ModelBuild:
    """One ``[[model]]`` entry resolved to the build command's parameters."""

    name: str
    params: dict[str, Any]
    where: str
    # Per-pass options (file precedence already applied; command-line flags are applied at build time).
    pass_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class BuildFile:
    """A parsed config file: the models and the command-level settings."""

    path: Path
    models: list[ModelBuild]
    command: dict[str, Any] = field(default_factory=dict)


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params if p.name and p.name not in NOT_IN_FILE}


def _spelling(param: click.Parameter) -> str:
    """How a parameter is written in the file: its long flag without dashes."""
    if isinstance(param, click.Argument):
        return "spec"
    longs = [o for o in param.opts if o.startswith("--")]
    return (longs[0][2:] if longs else param.name or "").replace("-", "_")


def known_fields(command: click.Command) -> list[str]:
    """Every key a model table accepts (for error messages and docs)."""
    names = {_spelling(p) for p in _params(command).values()}
    names.update(alias for alias, (target, _neg) in ALIASES.items() if target in _params(command))
    return sorted(names - {"config"})


def _resolve_key(key: str, params: Mapping[str, click.Parameter]) -> tuple[str, bool] | None:
    if key in ALIASES and ALIASES[key][0] in params:
        return ALIASES[key]
    for name, param in params.items():
        if _spelling(param) == key:
            return name, False
    return None


def _relative_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _resolve_spec(value: str, base: Path) -> str:
    """A MODEL spec: a file path part (``file.py:Name``, ``.pt2``) is made relative to the config file."""
    head, sep, tail = value.rpartition(":")
    if sep and head.endswith(".py"):
        return _relative_path(head, base) + ":" + tail
    if value.endswith((".pt2", ".pt", ".pth")):
        return _relative_path(value, base)
    return value


def _file_items(param: click.Parameter, value: Any, fail: Callable[[str], ConfigError]) -> list[Any]:
    """A multiple option's TOML value as the items click would get, one per flag.

    ``tolerances`` is a table ``{output = {field = value}}``: each entry becomes the
    ``(output, field, value)`` that :class:`~optpipe.cli.main.ToleranceType` checks like a ``--tolerance``;
    ``output_kinds`` a table ``{output = kind}``, each ``(output, kind)`` checked like an ``--output-kind``.
    """
    if param.name == "tolerances":
        if not isinstance(value, dict):
            raise fail("a table {output = {atol = ..., min_cosine = ...}}")
        items: list[Any] = []
        for output, fields in value.items():
            if not isinstance(fields, dict):
                raise fail(f"a table of tolerance fields for output '{output}'")
            items.extend((output, name, number) for name, number in fields.items())
        return items
    if param.name == "output_kinds":  # a table {output = kind}: each entry checked like an --output-kind
        if not isinstance(value, dict):
            raise fail('a table {output = "logits" | "embedding" | "regression" | "generic"}')
        return list(value.items())
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise fail("a list of strings")
    return items


def _click_convert(key: str, value: Any, param: click.Parameter, where: str, ctx: click.Context) -> Any:
    """``param.type.convert``: the command line's own conversion and checks, errors naming the file's field."""
    try:
        return param.type.convert(value, param, ctx)
    except click.BadParameter as error:
        if param.name in ("precision", "tolerances", "output_kinds"):  # optpipe's own types: their message says it
            raise ConfigError(f"{where}.{key}: {error.message}") from None
        choices = getattr(param.type, "choices", None)
        expected = f"one of {', '.join(map(str, choices))}" if choices else f"{param.type.name} ({error.message})"
        raise ConfigError(f"{where}.{key}: expected {expected}, got {value!r}") from None


def _convert(key: str, value: Any, param: click.Parameter, negate: bool, base: Path, where: str,
             ctx: click.Context) -> Any:
    """Check and convert one file value with the click parameter's own type, as the command line would."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}.{key}: expected {expected}, got {value!r}")

    if param.name == "output_names" and isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise fail("a list of output names")
        return ",".join(value)  # the flag's own form: comma-separated names
    if isinstance(param, click.Option) and param.is_flag:
        if not isinstance(value, bool):
            raise fail("true or false")
        return (not value) if negate else value
    if param.multiple:
        return tuple(_click_convert(key, item, param, where, ctx) for item in _file_items(param, value, fail))
    if param.name == "precision":  # a list, or one comma-separated string as on the command line
        return _click_convert(key, value, param, where, ctx)
    if isinstance(value, dict | list | bool):
        raise fail(f"a single {param.type.name} value")
    if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType) and isinstance(value, str):
        raise fail(f"a {param.type.name} (not a string)")
    if isinstance(param.type, click.Path):
        if not isinstance(value, str):
            raise fail("a path (a string)")
        value = _relative_path(value, base)
    elif param.name == "model":
        if not isinstance(value, str):
            raise fail("a model spec such as 'models/net.py:Net'")
        return _resolve_spec(value, base)
    elif param.name == "calib_data" and isinstance(value, str):
        value = _resolve_spec(value, base) if ".py:" in value else (
            _relative_path(value, base) if (base / value).exists() else value)
    if isinstance(param.type, click.types.StringParamType) and not isinstance(value, str):
        raise fail("a string")
    if isinstance(param.type, click.types.FloatParamType | click.types.FloatRange) and isinstance(value, int):
        value = float(value)
    return _click_convert(key, value, param, where, ctx)


def _table(data: Mapping[str, Any], params: Mapping[str, click.Parameter], base: Path, where: str,
           ctx: click.Context, command: click.Command, top: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        resolved = _resolve_key(key, params)
        if resolved is None:
            expected = ", ".join(sorted([*known_fields(command), "passes"]))
            raise ConfigError(f"{where}: unknown key '{key}'; expected one of {expected}")
        name, negate = resolved
        if name in COMMAND_LEVEL and not top:
            raise ConfigError(f"{where}.{key}: only allowed at the top level of the file (it applies to the "
                              "whole command)")
        if name == "model" and top:
            raise ConfigError(f"{where}.{key}: a model spec belongs in a [[model]] table")
        out[name] = _convert(key, value, params[name], negate, base, where, ctx)
    return out


# (pass, field) whose value is a path: relative to the config file, like the flags' paths.
PASS_PATH_FIELDS = frozenset({("int8", "calib_data"), ("fp16", "calib_data"), ("int8", "cache_file"),
                              ("engine-trt", "timing_cache")})


def _pass_tables(value: Any, where: str, base: Path, flags: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A ``passes`` table, checked against each pass's Config; ``flags`` are the table's other keys."""
    from optpipe.infra.pass_options import check_pass_options, flag_fields

    where = f"{where}.passes"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of pass tables ([passes.<pass>] with fields of that "
                          f"pass), got {value!r}")
    try:
        checked = check_pass_options(value, where)
    except ConfigError:
        raise
    except UserInputError as error:
        raise ConfigError(str(error)) from None
    for name, fields in checked.items():
        for key in fields:
            if (name, key) in PASS_PATH_FIELDS and isinstance(fields[key], str):
                text = fields[key]
                if ".py:" in text:
                    fields[key] = _resolve_spec(text, base)
                elif key != "calib_data" or (base / text).exists():  # calib_data may be "<in-memory>"
                    fields[key] = _relative_path(text, base)
            for flag in flags:
                if (name, key) in flag_fields().get(flag, ()):
                    raise ConfigError(f"{where}.{name}.{key}: also set by '{flag}' in the same table; keep one")
    return checked


def _without_flags(pass_options: Mapping[str, Mapping[str, Any]], flags: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``pass_options`` minus the fields that the given flags set (a more specific source set them)."""
    from optpipe.infra.pass_options import flag_fields

    covered = {pair for flag in flags for pair in flag_fields().get(flag, ())}
    return {name: {k: v for k, v in fields.items() if (name, k) not in covered}
            for name, fields in pass_options.items()}


def merge_pass_options(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later layers win, field by field."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, fields in layer.items():
            merged.setdefault(name, {}).update(fields)
    return {name: fields for name, fields in merged.items() if fields}


def _default_name(spec: str) -> str:
    return spec.rpartition(":")[2] or Path(spec).stem


def load_build_file(path: str | Path, command: click.Command, ctx: click.Context) -> BuildFile:
    """Parse and check a config file against ``command``'s parameters. Raises :class:`ConfigError`."""
    file = Path(path)
    label = str(file)
    if not file.exists():
        raise ConfigError(f"{label}: no such config file")
    try:  # a FIFO (-c <(...)) is waited for a bounded time, never forever; other special files are refused
        data = tomllib.loads(read_input_bytes(file, "config file").decode("utf-8"))
    except ConfigError:
        raise
    except UserInputError as error:
        raise ConfigError(str(error)) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{label}: not valid TOML ({error})") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8; tomllib raises this, not TOMLDecodeError
        raise ConfigError(f"{label}: not UTF-8 text (byte {error.start}); TOML files must be UTF-8") from None
    base = file.resolve().parent
    params = _params(command)
    models_data = data.pop("model", None)
    if models_data is None or models_data == []:  # `model = []` builds nothing: never an exit-0 "success"
        raise ConfigError(f"{label}: no [[model]] table; add one per model to build")
    if not isinstance(models_data, list) or not all(isinstance(m, dict) for m in models_data):
        raise ConfigError(f"{label}: 'model' must be an array of tables ([[model]]), got {type(models_data).__name__}")
    top_passes_raw = data.pop("passes", None)
    top = _table(data, params, base, f"{label}: top level", ctx, command, top=True)
    top_passes = ({} if top_passes_raw is None
                  else _pass_tables(top_passes_raw, f"{label}: top level", base, top))
    command_settings = {k: top.pop(k) for k in list(top) if k in COMMAND_LEVEL}
    try:
        models = _load_models(models_data, params, base, label, ctx, command, top, top_passes)
    except ConfigError as error:
        error.junit = command_settings.get("junit")
        raise
    return BuildFile(file, models, command_settings)


def _load_models(models_data: Sequence[Mapping[str, Any]], params: Mapping[str, click.Parameter], base: Path,
                 label: str, ctx: click.Context, command: click.Command, top: Mapping[str, Any],
                 top_passes: Mapping[str, Mapping[str, Any]]) -> list[ModelBuild]:
    name_param = "name"
    models: list[ModelBuild] = []
    seen_out: dict[str, str] = {}
    cli = _cli_overrides(ctx)
    for index, raw in enumerate(models_data):
        raw = dict(raw)
        name = raw.pop(name_param, None)
        where = f"{label}: model[{index}]" + (f" ({name})" if name else "")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where}.name: expected a string, got {name!r}")
        passes_raw = raw.pop("passes", None)
        own = _table(raw, params, base, where, ctx, command, top=False)
        values = {**top, **own}
        model_passes = {} if passes_raw is None else _pass_tables(passes_raw, where, base, own)
        pass_options = merge_pass_options(_without_flags(top_passes, list(own)), model_passes)
        if not values.get("model"):
            raise ConfigError(f"{where}: missing 'spec' (the model, e.g. 'models/net.py:Net')")
        name = name or _default_name(values["model"])
        where = f"{label}: model[{index}] ({name})"
        _check_target_options(values, params, where, cli.get("target") or values.get("target"))
        out = values.get("out_dir")
        if out is not None:  # one directory however it is spelled (./sub/../outd, a symlink): by resolved path
            same = str(resolved(out))
            if same in seen_out:
                raise ConfigError(f"{where}.out: {out} is also the output of {seen_out[same]}; "
                                  "each model needs its own directory")
            seen_out[same] = name
        models.append(ModelBuild(name, values, where, pass_options))
    return models


def _target_only(params: Mapping[str, click.Parameter]) -> list[str]:
    """The parameters that only apply to ``--target tensorrt`` (their help starts with ``[tensorrt]``)."""
    return [name for name, param in params.items()
            if isinstance(param, click.Option) and (param.help or "").startswith("[tensorrt]")]


def _check_target_options(values: Mapping[str, Any], params: Mapping[str, click.Parameter], where: str,
                          target: str | None, cli: Mapping[str, Any] | None = None) -> None:
    """The build command's rule "the [tensorrt] options need --target tensorrt", per model, before any build.

    ``values`` are the model's values from the file; ``cli`` (for a model about to be built) the options
    typed on the command line, which win over the file.
    """
    target = target or "cpu"
    if target == "tensorrt":
        return
    for name in _target_only(params):
        if cli is not None:
            if cli.get(name) not in (None, False):
                raise ConfigError(f"{where}: --{_spelling(params[name]).replace('_', '-')} (command line) is a "
                                  f"[tensorrt] option, but this model's target is {target}")
        elif values.get(name) not in (None, False):
            raise ConfigError(f"{where}.{_spelling(params[name])}: a [tensorrt] option, but this model's target "
                              f"is {target}; set target = \"tensorrt\" or remove it")


def _cli_overrides(ctx: click.Context) -> dict[str, Any]:
    """Parameters the user typed on the command line (they win over the file)."""
    return {
        name: value
        for name, value in ctx.params.items()
        if name not in NOT_IN_FILE and name != "model"  # MODEL selects an entry, it does not replace specs
        and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }


def run_build_file(ctx: click.Context, config_path: Path, select: str | None, runner: ModelRunner) -> int:
    """Build every (selected) model of a config file; return the worst exit code.

    Each model is built by invoking the ``build`` command itself with that
    model's parameters, so a file build and a command-line build cannot drift
    apart. One JUnit file (``junit``) collects every model's gates.
    """
    try:
        return _run_build_file(ctx, config_path, select, runner)
    except ConfigError as error:
        # A stale JUnit file from an earlier passing run must not stay behind: CI would report it.
        junit = ctx.params.get("junit") or error.junit
        if junit and output_refusal(junit, OutputGuard.of([config_path])) is None:
            from optpipe.report.junit import error_suite, write_junit

            message = f"exit {error.exit_code}: ConfigError: {error}"
            with contextlib.suppress(OSError):  # the config error is the one line to print
                write_junit(Path(junit), [error_suite(Path(config_path).name, message, kind="ConfigError")])
        raise


def _run_build_file(ctx: click.Context, config_path: Path, select: str | None, runner: ModelRunner) -> int:
    command = ctx.command
    build_file = load_build_file(config_path, command, ctx)
    try:
        return _build_models(ctx, config_path, select, build_file, runner)
    except ConfigError as error:
        error.junit = error.junit or build_file.command.get("junit")
        raise


def _resolve_tasks(ctx: click.Context, config_path: Path, select: str | None,
                   build_file: BuildFile) -> tuple[list[ModelTask], dict[str, Any]]:
    """The selected models as build tasks (every check done), and the command-level settings."""
    command = ctx.command
    overrides = _cli_overrides(ctx)
    models = build_file.models
    if select:
        models = [m for m in models if select in (m.name, m.params.get("model"))
                  or _resolve_spec(select, Path.cwd()) == m.params.get("model")]
        if not models:
            raise ConfigError(f"{config_path}: no model named '{select}'; the file has: "
                              f"{capped_list([m.name for m in build_file.models])}")
    if "out_dir" in overrides and len(models) > 1:
        raise ConfigError(f"--out names one directory but {config_path} builds {len(models)} models; "
                          "set 'out' per model (or select one model by name)")
    # ctx.params holds this invocation's values with click's defaults applied (and converted).
    defaults = {name: value for name, value in ctx.params.items() if name not in NOT_IN_FILE}
    command_settings = {**build_file.command, **{k: v for k, v in overrides.items() if k in COMMAND_LEVEL}}
    tasks: list[ModelTask] = []
    for model in models:
        params = {**defaults, **model.params, **overrides, **command_settings, "config_file": None, "junit": None,
                  "executor": None}
        for name, param in _params(command).items():
            if param.multiple and params.get(name) is None:
                params[name] = ()
        if not params.get("out_dir"):
            raise ConfigError(f"{model.where}: missing 'out' (the build directory of this model)")
        params["pass_options"] = _without_flags(model.pass_options, list(overrides)) or None
        _check_target_options(params, _params(command), model.where, params.get("target"), overrides)
        # Absolute paths: an executor may build in another working directory (a Ray worker).
        params = {k: v.absolute() if isinstance(v, Path) else v for k, v in params.items()}
        tasks.append(ModelTask(model.name, model.where, params))
    return tasks, command_settings


def tasks_from_file(config_path: Path, command: click.Command, select: str | None = None) -> list[ModelTask]:
    """The build tasks of a config file as ``optpipe build -c FILE [MODEL]`` (``command``) would make them."""
    ctx = command.make_context("build", ["-c", str(config_path)])
    build_file = load_build_file(config_path, command, ctx)
    return _resolve_tasks(ctx, config_path, select, build_file)[0]


def _check_command_outputs(ctx: click.Context, config_path: Path, tasks: Sequence[ModelTask],
                           settings: Mapping[str, Any]) -> None:
    """The file's ``junit`` and the command's ``--log-file``: refused now, not after the models are published."""
    from optpipe.builder.precheck import check_outputs

    ctx.meta[CONFIG_META] = config_path
    outputs = {"junit": settings.get("junit"), "--log-file": ctx.find_root().params.get("log_file")}
    check_outputs(None, out_dirs=[Path(t.params["out_dir"]) for t in tasks], outputs=outputs,
                  inputs=[config_path, *(t.params.get("weights") for t in tasks)], cache_dir=settings.get("cache_dir"))


def capped_list(names: Sequence[str], limit: int = 20) -> str:
    """``a, b, c`` - at most ``limit`` names, then how many more (20,000 names are not one line)."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} ... and {len(names) - limit} more"


def _build_models(ctx: click.Context, config_path: Path, select: str | None, build_file: BuildFile,
                  runner: ModelRunner) -> int:
    from optpipe.matrix.executors import get_executor, run_matrix
    from optpipe.matrix.tasks import write_matrix_junit

    tasks, settings = _resolve_tasks(ctx, config_path, select, build_file)
    _check_command_outputs(ctx, config_path, tasks, settings)
    executor = get_executor(settings.get("executor"))
    as_json = bool(settings.get("as_json"))

    def echo(message: str) -> None:
        click.echo(message, err=True)

    progress = (lambda counts: echo(counts.line())) if len(tasks) > 1 else None
    matrix = run_matrix(tasks, executor, runner, progress, echo)
    if settings.get("junit"):
        write_matrix_junit(Path(settings["junit"]), matrix.results)
    if as_json:  # ONE document for every model (a model that stopped early has "report": null)
        import json

        document = {"schema": BUILD_FILE_SCHEMA, "config": str(config_path), **matrix.to_dict()}
        click.echo(json.dumps(document, indent=2, default=str))
    elif len(tasks) > 1 or executor.name != "in-process":
        click.echo(matrix.table())
    if len(tasks) > 1:
        summary = ", ".join(f"{r.name}: exit {r.exit_code}" for r in matrix.results)
        echo(f"optpipe: {len(tasks)} models built ({summary})")
    return matrix.exit_code

"""JUnit XML for CI systems: one test case per gate.

CI servers (GitLab, Jenkins, GitHub test reporters) understand JUnit XML and
show each failed test with its message, so a parity failure appears as
"fp16 / logits: cosine 0.991 < 0.999" in the merge request rather than as a
non-zero exit code to dig out of a log. One test case per variant per output
(``parity[<output>]``), plus one per variant for failures that belong to no
single output (an engine that cannot run a case); a variant whose engine was
not built here (a split build) is a skipped case. A build that failed with an
error before any variant finished (exit 2 or 3) is one ``build`` case with an
``<error>`` carrying the one-line message, so the CI page says why.
"""

from __future__ import annotations

import contextlib
import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from optpipe.core.safe_output import OutputRefused, write_output


def _case(suite: ET.Element, classname: str, name: str, seconds: float = 0.0) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")


def _fail(case: ET.Element, messages: Sequence[str], kind: str = "parity") -> None:
    failure = ET.SubElement(case, "failure", message="; ".join(messages)[:1000], type=kind)
    failure.text = "\n".join(messages)


def report_suite(report: Mapping[str, Any], name: str | None = None) -> ET.Element:
    """A ``<testsuite>`` for one build report dict."""
    model = name or str(report.get("model") or "model")
    suite = ET.Element("testsuite", name=f"optpipe: {model}")
    validate_seconds = {
        p.get("variant"): float(p.get("seconds") or 0)
        for p in report.get("passes") or []
        if p.get("name") == "validate"
    }
    for variant in report.get("variants") or []:
        precision = variant["precision"]
        classname = f"optpipe.{model}.{precision}"
        parity = variant.get("parity") or {}
        outputs = parity.get("outputs") or {}
        seconds = validate_seconds.get(precision, 0.0) / max(1, len(outputs))
        if variant.get("status") == "pending" or not parity:
            case = _case(suite, classname, "parity")
            reason = report.get("next_step") or "no engine was built, so parity was not checked"
            ET.SubElement(case, "skipped", message=str(reason)[:1000])
            continue
        for output, record in outputs.items():
            case = _case(suite, classname, f"parity[{output}]", seconds)
            if not record.get("passed", False):
                _fail(case, [f"{precision} / {output}: {f}" for f in record.get("failures") or ["failed"]])
            elif record.get("unjudged") and variant.get("verdict") == "unjudged":  # could not judge: not a pass
                _fail(case, [f"{precision} / {output}: {line}" for line in record["unjudged"]], kind="unjudged")
            ET.SubElement(case, "system-out").text = (
                f"max_abs={record.get('max_abs')} mean_abs={record.get('mean_abs')} cosine={record.get('cosine')} "
                f"top1={record.get('top1_agreement')} tolerance={record.get('tolerance')}"
            )
        per_output = {f"output '{o}': " for o in outputs}
        other = [f for f in parity.get("failures") or [] if not any(f.startswith(p) for p in per_output)]
        if other or not outputs:
            case = _case(suite, classname, "inference")
            if other or not parity.get("passed", False):
                _fail(case, [f"{precision}: {f}" for f in other] or [f"{precision}: no output was compared"],
                      kind="inference")
    _count(suite)
    return suite


def error_suite(model: str, message: str, kind: str = "error") -> ET.Element:
    """A suite with one erroring ``build`` case, for builds that ended in an error (``kind``: its type)."""
    suite = ET.Element("testsuite", name=f"optpipe: {model}")
    case = _case(suite, f"optpipe.{model}", "build")
    error = ET.SubElement(case, "error", message=message[:1000], type=kind)
    error.text = message
    _count(suite)
    return suite


#: Where :func:`junit_on_error` leaves the message of a build's error for ``optpipe build -c``.
ERROR_META_KEY = "optpipe.build_error"


def junit_on_error(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of the ``build`` command: an OptpipeError (exit 2/3) or a usage error raised by the
    command (``click.UsageError``, exit 2) still writes ``--junit FILE``, so a stale passing file never
    stays behind.

    The message is also left in the click context's ``meta`` so a config-file
    build (which writes one JUnit file for all its models) can report it.
    """
    import click

    from optpipe.core.errors import OptpipeError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (OptpipeError, click.UsageError) as error:
            text = error.format_message() if isinstance(error, click.UsageError) else str(error)
            message = f"exit {error.exit_code}: {type(error).__name__}: {text}"
            context = click.get_current_context(silent=True)
            if context is not None:
                context.meta[ERROR_META_KEY] = message
            junit = kwargs.get("junit")
            if junit and not kwargs.get("config_file") and not isinstance(error, OutputRefused):
                model = str(kwargs.get("model") or "model")
                with contextlib.suppress(OSError):  # the build's error is the one line to print, not the file's
                    write_junit(Path(junit), [error_suite(model, message, kind=type(error).__name__)])
            raise

    return wrapper


def _count(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    suite.set("time", f"{sum(float(c.get('time') or 0) for c in cases):.3f}")


def junit_xml(suites: Sequence[ET.Element]) -> bytes:
    """The document: ``<testsuites>`` with totals."""
    root = ET.Element("testsuites", name="optpipe")
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(s.get(key) or 0) for s in suites)))
    root.extend(suites)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def write_junit(path: Path, suites: Sequence[ET.Element]) -> None:
    """Write the JUnit file atomically (a CI step reading it never sees half a file); a device or FIFO in place."""
    write_output(Path(path), junit_xml(suites))

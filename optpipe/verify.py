"""``optpipe verify DIR``: is this build directory still what the build made, and does it still pass?

Two checks, both needing only the directory (no PyTorch model):

1. Integrity: every file listed in ``manifest.json`` is re-hashed; a changed
   or missing file is named. Files that are not in the manifest are reported
   as notes (a CI job may add logs next to the artifacts), not failures.
2. Parity: every built ``cpu``-target variant engine is run with ONNX Runtime
   on the saved golden inputs and compared with the saved PyTorch outputs
   using the same gate as the build (precision defaults plus the build's
   recorded tolerance overrides). Engines of other targets (TensorRT) need
   their hardware and are listed as skipped.

Exit codes: 0 all good, 1 something failed (the reasons are listed), 2 the
directory is not an optpipe build directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optpipe.artifact import sha256_file
from optpipe.errors import EXIT_GATE_FAILED, EXIT_OK, UserInputError
from optpipe.manifest import MANIFEST, build_files


@dataclass
class VerifyResult:
    """Outcome of verifying one build directory."""

    directory: Path
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked_files: int = 0
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_GATE_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "passed": self.passed,
            "exit_code": self.exit_code,
            "checked_files": self.checked_files,
            "failures": self.failures,
            "notes": self.notes,
            "variants": self.variants,
        }

    def summary(self) -> str:
        lines = [f"optpipe verify: {self.directory}"]
        lines.append(f"  files: {self.checked_files} checked against {MANIFEST}")
        for precision, record in self.variants.items():
            lines.append(f"  {precision:<8} parity {record['status']}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  FAIL: {failure}" for failure in self.failures)
        lines.append(f"  result: {'OK' if self.passed else 'FAILED'} (exit {self.exit_code})")
        return "\n".join(lines)


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path.parent} is not an optpipe build directory (no {what})") from None
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not an optpipe {what}")
    return data


def check_files(directory: Path, manifest: dict[str, Any], result: VerifyResult) -> None:
    """Re-hash every manifest file; name each missing or changed one."""
    listed = set()
    for entry in manifest.get("files", []):
        relative = entry["path"]
        listed.add(relative)
        path = directory / relative
        result.checked_files += 1
        if not path.is_file():
            result.failures.append(f"missing file: {relative}")
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            result.failures.append(
                f"changed file: {relative} (sha256 {digest[:12]}…, manifest says {entry['sha256'][:12]}…)"
            )
    for path in build_files(directory):
        relative = path.relative_to(directory).as_posix()
        if relative not in listed:
            result.notes.append(f"file not in the manifest: {relative}")


def check_parity(directory: Path, report: dict[str, Any], result: VerifyResult, threads: int | None) -> None:
    """Rerun the parity gate of every cpu-target variant on the saved golden data."""
    from optpipe.golden import GoldenData
    from optpipe.pass_base import BuildContext
    from optpipe.passes.validate import validate_outputs
    from optpipe.runtime import OrtRunner
    from optpipe.target import get_target
    from optpipe.tensor_spec import TensorSpec

    build = report.get("build") or {}
    golden_dir = directory / str(build.get("golden") or "golden")
    if not golden_dir.is_dir():
        result.failures.append(f"golden data missing: {golden_dir.relative_to(directory)}")
        return
    golden = GoldenData.load(golden_dir)
    ctx = BuildContext(
        work_dir=directory,
        target=get_target("cpu"),
        input_specs=tuple(TensorSpec.from_dict(s) for s in build.get("inputs") or []),
        output_names=tuple(build.get("outputs") or []),
        golden=golden,
        threads=threads,
    )
    tolerances = build.get("tolerances") or {}
    for variant in report.get("variants") or []:
        precision = variant["precision"]
        if report.get("target") != "cpu":
            result.variants[precision] = {"status": f"skipped ({report.get('target')} engines need their runtime)"}
            result.notes.append(f"{precision}: parity not rerun; {report.get('target')} engines need their runtime")
            continue
        if variant.get("status") != "built" or not variant.get("artifact"):
            result.variants[precision] = {"status": "skipped (no engine was built)"}
            continue
        engine = directory / variant["artifact"]
        try:
            runner = OrtRunner(engine, threads=threads)
            parity = validate_outputs(runner, ctx, precision, tolerances)
        except Exception as error:  # a corrupt engine is a verification failure, not a crash
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            result.failures.append(f"{precision}: engine {variant['artifact']} cannot run: {first[:300]}")
            result.variants[precision] = {"status": "error"}
            continue
        result.variants[precision] = {"status": "pass" if parity["passed"] else "FAIL", "parity": parity}
        result.failures.extend(f"{precision}: parity: {failure}" for failure in parity["failures"])


def verify_build(directory: str | Path, *, parity: bool = True, threads: int | None = None) -> VerifyResult:
    """Verify a build directory. Raises :class:`UserInputError` (exit 2) when it is not one."""
    root = Path(directory)
    if not root.is_dir():
        raise UserInputError(f"{root} is not a directory")
    if not (root / MANIFEST).exists() and not (root / "report.json").exists():
        raise UserInputError(f"{root} is not an optpipe build directory (no {MANIFEST} or report.json)")
    manifest = _load_json(root / MANIFEST, MANIFEST)
    result = VerifyResult(root)
    check_files(root, manifest, result)
    if parity:
        try:
            report = _load_json(root / "report.json", "report.json")
        except UserInputError as error:
            result.failures.append(str(error))
            return result
        check_parity(root, report, result, threads)
    return result

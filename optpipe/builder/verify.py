"""``optpipe verify DIR``: is this build directory still what the build made, and does it still pass?

Two checks, both needing only the directory (no PyTorch model):

1. Integrity: every file listed in ``manifest.json`` is re-hashed; a changed
   or missing file is named. Files that are not in the manifest are reported
   as notes (a CI job may add logs next to the artifacts), not failures.
2. Parity: every built ``cpu``-target variant engine is run with ONNX Runtime
   on the saved golden inputs and compared with the saved PyTorch outputs
   using the same gate as the build (precision defaults plus the build's
   recorded tolerance overrides). TensorRT engines are run with TensorRT
   (``TrtEngineRunner``) when TensorRT and an NVIDIA GPU are usable here;
   otherwise, and for a split build's pending variants, their parity is
   *not verified* here and the result says so.

Exit codes: 0 all good, 1 something failed (the reasons are listed), 2 the
directory is not an optpipe build directory, 3 nothing failed but the parity
of some TensorRT variant could not be checked on this machine (files were
re-hashed only; run verify on the GPU machine). ``--no-parity`` asks for the
hash check alone and exits 0 when the files are intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optpipe.core.artifact import sha256_file
from optpipe.core.errors import (
    EXIT_ENVIRONMENT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    EXIT_UNJUDGED,
    EnvironmentUnavailable,
    UserInputError,
    first_line,
)
from optpipe.core.records import VariantStatus
from optpipe.report.build_report import Report, ReportUnreadable, read_report
from optpipe.report.manifest import MANIFEST, SELF_HASH, build_files, canonical_sha256


@dataclass
class VerifyResult:
    """Outcome of verifying one build directory."""

    directory: Path
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Parity checks that could not run here (TensorRT engines without TensorRT + GPU, pending variants).
    unverified: list[str] = field(default_factory=list)
    checked_files: int = 0
    # Gates that could not judge (optpipe.compare.output_kinds) where the build required every gate to judge.
    unjudged: list[str] = field(default_factory=list)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Nothing failed and nothing was left unchecked (a hash-only result is not a pass)."""
        return not self.failures and not self.unverified and not self.unjudged

    @property
    def exit_code(self) -> int:
        if self.failures:
            return EXIT_GATE_FAILED
        if self.unjudged:
            return EXIT_UNJUDGED
        return EXIT_ENVIRONMENT if self.unverified else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "passed": self.passed,
            "exit_code": self.exit_code,
            "checked_files": self.checked_files,
            "failures": self.failures,
            "notes": self.notes,
            "unverified": self.unverified,
            "unjudged": self.unjudged,
            "variants": self.variants,
        }

    def summary(self) -> str:
        lines = [f"optpipe verify: {self.directory}"]
        lines.append(f"  files: {self.checked_files} checked against {MANIFEST}")
        for precision, record in self.variants.items():
            lines.append(f"  {precision:<8} parity {record['status']}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  NOT VERIFIED: {item}" for item in self.unverified)
        lines.extend(f"  FAIL: {failure}" for failure in self.failures)
        lines.extend(f"  UNJUDGED: {line}" for line in self.unjudged)
        verdict = ("FAILED" if self.failures else "UNJUDGED" if self.unjudged
                   else "FILES OK, PARITY NOT VERIFIED HERE" if self.unverified else "OK")
        lines.append(f"  result: {verdict} (exit {self.exit_code})")
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


def _check_manifest(manifest: dict[str, Any], path: Path) -> list[dict[str, str]]:
    """The manifest's ``files`` entries, each checked to be ``{"path": relative path, "sha256": hex}``.

    A malformed manifest (edited by hand, truncated, from another tool) is a UserInputError naming
    the first bad entry, not a traceback.
    """
    files = manifest.get("files", [])
    if not isinstance(files, list):
        raise UserInputError(f"{path}: 'files' must be a list, got {type(files).__name__}")
    for index, entry in enumerate(files):
        where = f"{path}: files[{index}]"
        if not isinstance(entry, dict):
            raise UserInputError(f"{where} must be an object with 'path' and 'sha256', got {entry!r:.60}")
        relative, digest = entry.get("path"), entry.get("sha256")
        if not isinstance(relative, str) or not relative:
            raise UserInputError(f"{where}.path must be a non-empty string, got {relative!r:.60}")
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise UserInputError(f"{where}.path {relative!r:.60} is not a path inside the build directory")
        if (not isinstance(digest, str) or len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest.lower())):
            raise UserInputError(f"{where}.sha256 must be 64 hex digits, got {digest!r:.60}")
    return files


def check_files(directory: Path, manifest: dict[str, Any], result: VerifyResult) -> None:
    """Re-hash every manifest file; name each missing or changed one."""
    listed = set()
    for entry in _check_manifest(manifest, directory / MANIFEST):
        relative = entry["path"]
        listed.add(relative)
        path = directory / relative
        result.checked_files += 1
        link = _symlink_in(directory, relative)
        if link is not None:
            result.failures.append(f"{relative} is a symbolic link ({link}); a build directory holds its own files")
            continue
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


def _symlink_in(directory: Path, relative: str) -> str | None:
    """The first component of ``relative`` (inside ``directory``) that is a symlink, if any.

    A symlink would let verify hash and run a copy outside the build (which may differ from what
    is deployed, or be swapped later), so an artifact that is one fails verification.
    """
    path = directory
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            return path.relative_to(directory).as_posix()
    return None


def check_self_hash(manifest: dict[str, Any], result: VerifyResult) -> None:
    """The manifest's own hash must match its content: catches an edited manifest.json."""
    recorded = manifest.get(SELF_HASH)
    if recorded is None:
        result.failures.append(f"{MANIFEST} has no {SELF_HASH} (edited, or written by an older optpipe); "
                               "its content cannot be trusted: rebuild")
        return
    try:
        actual = canonical_sha256(manifest)
    except ValueError as error:  # NaN/Infinity written into it by hand
        result.failures.append(f"{MANIFEST} is not canonical JSON ({error}): it was edited")
        return
    if actual != recorded:
        result.failures.append(
            f"{MANIFEST} was edited: its content hashes to {actual[:12]}…, its {SELF_HASH} says {str(recorded)[:12]}…"
        )


def check_parity(directory: Path, report: Report, result: VerifyResult, threads: int | None) -> None:
    """Rerun the parity gate of every cpu-target variant on the saved golden data."""
    from optpipe.compare.golden import GoldenData
    from optpipe.compare.parity import validate_outputs
    from optpipe.infra.pass_base import BuildContext
    from optpipe.runtime.runners import OrtRunner
    from optpipe.runtime.target import get_target

    build = report.build
    golden_dir = directory / (build.golden if build is not None else "golden")
    if not golden_dir.is_dir():
        result.failures.append(f"golden data missing: {golden_dir.relative_to(directory)}")
        return
    try:
        golden = GoldenData.load(golden_dir)
    except UserInputError as error:  # a corrupted or foreign npz: named, and the parity cannot be rerun
        result.failures.append(f"golden data: {error}")
        return
    ctx = BuildContext(
        work_dir=directory,
        target=get_target("cpu"),
        input_specs=build.inputs if build is not None else (),
        output_names=build.outputs if build is not None else (),
        golden=golden,
        threads=threads,
    )
    tolerances = build.tolerances if build is not None else {}
    if not _tolerances_valid(tolerances, result):
        return
    kinds = build.output_kinds if build is not None else {}  # the kinds the build judged by
    target = report.target
    if target not in ("cpu", "tensorrt"):
        for variant in report.variants:
            result.variants[variant.precision] = {"status": f"not verified ({target} engines need their runtime)"}
            result.unverified.append(f"{variant.precision}: parity not rerun; {target} engines need their runtime")
        return
    if target == "tensorrt":
        check_trt_parity(directory, report, result, ctx, tolerances, kinds)
        return
    for variant in report.variants:
        precision = variant.precision
        if variant.status is not VariantStatus.BUILT or not variant.artifact:
            result.variants[precision] = {"status": "skipped (no engine was built)"}
            continue
        engine = directory / variant.artifact
        try:
            runner = OrtRunner(engine, threads=threads)
            parity = validate_outputs(runner, ctx, precision, tolerances, kinds)
        except Exception as error:  # a corrupt engine is a verification failure, not a crash
            first = first_line(error, with_type=False)
            result.failures.append(f"{precision}: engine {variant.artifact} cannot run: {first}")
            result.variants[precision] = {"status": "error"}
            continue
        record_parity(result, precision, parity, report, rejected=not variant.required and not variant.passed)


def record_parity(result: VerifyResult, precision: str, parity: dict[str, Any], report: Report, *,
                  rejected: bool = False) -> None:
    """One variant's rerun parity: pass, FAIL, or UNJUDGED (a gate that could not judge, unless the build
    allowed it: ``build.options.require_judged`` false).

    ``rejected``: a candidate of ``--precision auto`` the build itself rejected (not required, failed). Its
    failing again is what the build recorded, so it is "rejected", not a verify failure: a build that exited 0
    must verify 0 (ViT-B/16's auto build verified 1 for its rejected static INT8). Should it pass now, the
    rerun disagrees with the report: a note, since the build shipped another variant on its own verdict.
    """
    options = (report.build.options if report.build is not None else None) or {}
    unjudged = parity.get("unjudged") or []
    if rejected:
        status = "rejected (as in the build)" if not parity["passed"] else "passes now (the build rejected it)"
        result.variants[precision] = {"status": status, "parity": parity}
        if parity["passed"]:
            result.notes.append(f"{precision}: the build rejected this candidate; its rerun parity passes")
        return
    status = "FAIL" if not parity["passed"] else "UNJUDGED" if unjudged else "pass"
    result.variants[precision] = {"status": status, "parity": parity}
    result.failures.extend(f"{precision}: parity: {failure}" for failure in parity["failures"])
    if parity["passed"] and unjudged and options.get("require_judged", True):
        result.unjudged.extend(f"{precision}: {line}" for line in unjudged)


def check_trt_parity(
    directory: Path, report: Report, result: VerifyResult, ctx: Any, tolerances: dict[str, Any],
    kinds: dict[str, str] | None = None,
) -> None:
    """Rerun the parity gate of every built TensorRT variant with TensorRT, when this machine can.

    Without TensorRT and a GPU (or on a GPU the engine was not built for) nothing is
    run: each variant is listed as not verified, with what it needs, and the exit code
    is 3. A plan that fails its integrity check or cannot run is a failure (exit 1).
    """
    from optpipe.compare.parity import validate_outputs
    from optpipe.runtime.tensorrt.engine import TrtEngineRunner, check_trt_available

    missing: str | None = None
    variants = report.variants
    if any(v.status is VariantStatus.BUILT and v.artifact for v in variants):
        try:
            check_trt_available()
        except EnvironmentUnavailable as error:
            missing = str(error)
    for variant in variants:
        precision = variant.precision
        if variant.status is not VariantStatus.BUILT or not variant.artifact:
            result.variants[precision] = {"status": "not verified (no engine yet: split build)"}
            result.unverified.append(
                f"{precision}: no TensorRT engine was built yet; run 'optpipe engine {directory}' on a machine "
                "with TensorRT and an NVIDIA GPU, then verify there"
            )
            continue
        if missing is not None:
            result.variants[precision] = {"status": "not verified (needs TensorRT + GPU)"}
            result.unverified.append(
                f"{precision}: parity of TensorRT engines needs TensorRT and an NVIDIA GPU; only the files were "
                f"checked here ({missing})"
            )
            continue
        runner = None
        try:
            runner = TrtEngineRunner(directory / variant.artifact)
            parity = validate_outputs(runner, ctx, precision, tolerances, kinds)
        except EnvironmentUnavailable as error:  # e.g. another GPU architecture or TensorRT version
            result.variants[precision] = {"status": "not verified (this machine cannot run the engine)"}
            result.unverified.append(f"{precision}: {error}")
            continue
        except Exception as error:  # a corrupt plan is a verification failure, not a crash
            first = first_line(error, with_type=False)
            result.failures.append(f"{precision}: engine {variant.artifact} cannot run: {first}")
            result.variants[precision] = {"status": "error"}
            continue
        finally:
            if runner is not None:
                runner.close()
        record_parity(result, precision, parity, report)


def _tolerances_valid(tolerances: Any, result: VerifyResult) -> bool:
    """report.json's tolerances by the rule ``--tolerance`` gets (finite, in range); a bad one is a failure."""
    from optpipe.builder.options import check_tolerance

    if not isinstance(tolerances, dict):
        result.failures.append(f"report.json: tolerances are {type(tolerances).__name__}, not a table; "
                               "parity not rerun")
        return False
    for output, fields in tolerances.items():
        try:
            if not isinstance(fields, dict):
                raise UserInputError(f"tolerances of output '{output}' are not a table")
            for name, value in fields.items():
                check_tolerance(str(output), str(name), value)
        except UserInputError as error:
            result.failures.append(f"report.json: {error}; parity not rerun")
            return False
    return True


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
    check_self_hash(manifest, result)
    if parity:
        try:
            report = read_report(root / "report.json")
        except ReportUnreadable as error:
            result.failures.append(f"{root / 'report.json'}: {error}")
            return result
        check_parity(root, report, result, threads)
    return result

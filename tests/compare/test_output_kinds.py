"""Output kinds: inference, gates that fit each kind, and the CLI/config plumbing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from optpipe.cli.main import main
from optpipe.compare.output_kinds import MIN_TOP1_ROWS, infer_kind, parse_output_kind, resolve_kinds, row_keys
from optpipe.compare.parity import judge_output, tolerance_for
from optpipe.core.errors import UserInputError


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _near_tie_embeddings(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows whose two largest coordinates nearly tie, and a copy 1e-3 off that flips every argmax."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(rows, 16)) * 0.1
    ref[:, 0], ref[:, 1] = 1.0, 0.999
    got = ref.copy()
    got[:, 1] += 0.002
    return _unit(ref).astype(np.float32), _unit(got).astype(np.float32)


def test_kinds_are_inferred_conservatively() -> None:
    rng = np.random.default_rng(0)
    assert infer_kind("out", _unit(rng.normal(size=(4, 32)))) == "embedding"
    assert infer_kind("sentence_embedding", rng.normal(size=(4, 32))) == "embedding"
    assert infer_kind("out", rng.normal(size=(4, 1))) == "regression"
    assert infer_kind("logits", rng.normal(size=(4, 10))) == "logits"
    probabilities = np.exp(rng.normal(size=(4, 5)))
    assert infer_kind("out", probabilities / probabilities.sum(axis=1, keepdims=True)) == "logits"
    assert infer_kind("out", rng.normal(size=(4, 10))) == "generic"  # no evidence: no top-1 gate
    assert infer_kind("out", rng.normal(size=(4, 3, 8))) == "generic"


def test_user_kinds_win_and_unknown_ones_are_user_errors() -> None:
    refs = {"a": np.ones((2, 4)), "b": np.ones((2, 1))}
    assert resolve_kinds(refs, {"*": "generic"}) == {"a": "generic", "b": "generic"}
    assert resolve_kinds(refs, {"a": "logits"})["a"] == "logits"
    with pytest.raises(UserInputError, match="unknown output"):
        resolve_kinds(refs, {"c": "logits"})
    with pytest.raises(UserInputError, match="unknown output kind 'class'"):
        parse_output_kind("a=class")
    with pytest.raises(UserInputError, match="expected NAME=KIND"):
        parse_output_kind("logits")


def test_embedding_is_not_rejected_by_top1_over_two_rows() -> None:
    """Issue 9's wrong verdict: an embedding with cosine ~1 was failed for 'top-1 agreement 0.5 < 0.99'."""
    ref, got = _near_tie_embeddings(2)
    record = judge_output("embedding", [ref], [got], tolerance_for("int8-dynamic", "embedding"), {})
    assert record["kind"] == "embedding"
    assert record["passed"], record["failures"]
    assert record["row_cosine_min"] > 0.999
    assert not record["top1_gated"]


def test_logits_top1_under_twenty_rows_is_unjudged_not_passed() -> None:
    """Issue 17: too few rows was a warning and counted as passed; now the record says it could not judge."""
    ref, got = _near_tie_embeddings(2)
    record = judge_output("logits", [ref], [got], tolerance_for("int8", "logits"), {})
    assert record["passed"] and not record["judged"]  # no gate failed, and none of the top-1 gates judged
    assert record["top1_agreement"] == 0.0
    assert not record["top1_gated"]
    assert len(record["unjudged"]) == 2 and all("needs >= 20" in line for line in record["unjudged"])


def _logits(decided: int, near_ties: int) -> tuple[np.ndarray, np.ndarray]:
    """Class scores: ``decided`` rows whose class 0 clearly leads, ``near_ties`` rows where 0 and 1 nearly tie."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(decided + near_ties, 10)) * 0.1
    ref[:decided, 0] = 4.0
    ref[decided:, 0], ref[decided:, 1] = 2.0, 1.99
    return ref.astype(np.float32), ref.copy().astype(np.float32)


def test_logits_top1_is_gated_over_enough_decided_rows() -> None:
    ref, got = _logits(MIN_TOP1_ROWS, 0)
    got[:, [0, 1]] = got[:, [1, 0]]  # every decided row flips
    record = judge_output("logits", [ref], [got], tolerance_for("int8", "logits"), {})
    assert record["top1_gated"] and not record["passed"]
    assert any(f"over {MIN_TOP1_ROWS} decided rows" in f for f in record["failures"])


def test_near_tie_flips_are_reported_not_gated() -> None:
    """Flips between two classes the reference scores within 0.3% are not changed decisions."""
    ref, got = _logits(24, 10)
    got[24:, [0, 1]] = got[24:, [1, 0]]  # only the near ties flip
    record = judge_output("logits", [ref], [got], tolerance_for("int8", "logits"), {})
    assert record["passed"], record["failures"]
    assert record["top1_gated"] and record["top1_decided_rows"] == 24
    assert record["top1_decided_agreement"] == 1.0
    assert record["top1_agreement"] == pytest.approx(24 / 34)
    strict = tolerance_for("int8", "logits", {"*": {"top1_margin": 0.0}})  # every row gated: fails
    assert not judge_output("logits", [ref], [got], strict, {})["passed"]


def test_a_decided_flip_among_near_ties_still_fails() -> None:
    ref, got = _logits(20, 10)
    got[:2, [0, 1]] = got[:2, [1, 0]]  # 2 of 20 decided rows flip: 0.90 < 0.95
    record = judge_output("logits", [ref], [got], tolerance_for("int8", "logits"), {})
    assert not record["passed"]
    assert record["top1_decided_agreement"] == pytest.approx(0.9)


def test_probability_rows_are_not_softmaxed_again() -> None:
    from optpipe.compare.output_kinds import class_probabilities, decided_rows

    probs = np.array([[0.52, 0.48, 0.0], [0.9, 0.05, 0.05]])
    assert np.allclose(class_probabilities(probs), probs)
    assert decided_rows(probs, 0.05).tolist() == [False, True]


def test_repeated_golden_rows_count_once() -> None:
    """The example rows resized to batch 16 are 2 rows, not 16: no top-1 gate on them."""
    ref, got = _near_tie_embeddings(2)
    inputs = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    big = {"x": np.concatenate([inputs["x"]] * 8)}
    keys = [row_keys(inputs), row_keys(big)]
    record = judge_output(
        "logits", [ref, np.concatenate([ref] * 8)], [got, np.concatenate([got] * 8)],
        tolerance_for("int8", "logits"), {}, keys,
    )
    assert record["rows"] == 2 and not record["top1_gated"]


def test_embedding_gate_fails_on_a_bad_row_and_reports_neighbours() -> None:
    rng = np.random.default_rng(1)
    ref = _unit(rng.normal(size=(30, 16)))
    got = ref.copy()
    got[3] = _unit(rng.normal(size=(1, 16)))[0]  # one row ruined: mean stays high, min does not
    record = judge_output("e", [ref], [got], tolerance_for("int8", "e"), {"e": "embedding"})
    assert not record["passed"]
    assert any("per-row cosine min" in f for f in record["failures"])
    assert record["neighbour_agreement"] < 1.0


MODEL = textwrap.dedent(
    '''
    import numpy as np
    import torch
    from torch import nn

    OUTPUT_NAMES = ("vec",)

    class Embedder(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = nn.Linear(32, 64)
            self.out = nn.Linear(64, 24)

        def forward(self, x):
            return nn.functional.normalize(self.out(torch.relu(self.proj(x))), dim=1)

    def example_inputs():
        return (torch.from_numpy(np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)),)
    '''
)


@pytest.mark.slow
def test_build_infers_embedding_and_records_the_kind(tmp_path: Path) -> None:
    (tmp_path / "emb.py").write_text(MODEL)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["build", f"{tmp_path / 'emb.py'}:Embedder", "--out", str(out), "--precision", "int8-dynamic",
               "--no-benchmark", "--no-cache"],
    )
    report = json.loads((out / "report.json").read_text())
    assert report["build"]["output_kinds"] == {"vec": "embedding"}
    assert (out / "build.log").is_file()  # third-party log lines land there, not on the console
    record = report["variants"][0]["parity"]["outputs"]["vec"]
    assert record["kind"] == "embedding" and record["rows"] == 2 and not record["top1_gated"]
    assert result.exit_code == 0, result.output


def test_cli_rejects_an_unknown_kind_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "emb.py").write_text(MODEL)
    result = CliRunner().invoke(
        main, ["build", f"{tmp_path / 'emb.py'}:Embedder", "--out", str(tmp_path / "o"), "--output-kind", "vec=bag"],
    )
    assert result.exit_code == 2
    assert "unknown output kind 'bag'" in result.output


def test_console_says_what_each_gate_judged_and_over_how_many_rows() -> None:
    from optpipe.report.build_report import _gate_lines

    ref, got = _logits(24, 10)
    got[24:, [0, 1]] = got[24:, [1, 0]]
    record = judge_output("logits", [ref], [got], tolerance_for("int8", "logits"), {})
    (line,) = _gate_lines({"logits": record})
    assert "top-1 agreement 1.0000 (>= 0.95) over 24 decided rows" in line
    assert "top-1 agreement 0.7059 (>= 0.6) over all 34 rows" in line

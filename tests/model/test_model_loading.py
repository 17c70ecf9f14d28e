"""Tests for loading models from specs, applying weights and finding/checking example inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from optpipe.core.errors import UserInputError
from optpipe.model.loading import (
    LoadedModel,
    check_inputs_against_model,
    find_example_inputs,
    load_model,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "loading"
TINY = FIXTURES / "tiny_model.py"
TEXT = FIXTURES / "text_model.py"


def _one_line(exc: pytest.ExceptionInfo[UserInputError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- load_model: happy paths -------------------------------------------------------------------


def test_load_class_from_file_is_in_eval_mode_and_keeps_sys_path_clean() -> None:
    path_before = list(sys.path)
    loaded = load_model(f"{TINY}:TinyNet")
    assert isinstance(loaded, LoadedModel)
    assert type(loaded.module).__name__ == "TinyNet" and not loaded.module.training
    assert loaded.source_module is not None and hasattr(loaded.source_module, "example_inputs")
    assert loaded.weights_sha256 is None and loaded.spec == f"{TINY}:TinyNet"
    assert sys.path == path_before


@pytest.mark.parametrize("name", ["make_model", "INSTANCE"])
def test_load_factory_function_or_instance(name: str) -> None:
    loaded = load_model(f"{TINY}:{name}")
    assert type(loaded.module).__name__ == "TinyNet" and not loaded.module.training


def test_load_same_file_twice_gives_independent_modules() -> None:
    first, second = load_model(f"{TINY}:TinyNet"), load_model(f"{TINY}:TinyNet")
    assert first.source_module is not second.source_module


def test_load_from_dotted_module_path() -> None:
    loaded = load_model("torch.nn:Identity")
    assert isinstance(loaded.module, nn.Identity)


# --- load_model: user errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (f"{TINY}:Missing", r"has no 'Missing'; available: TinyNet, NeedsArgs, BrokenInit, make_model"),
        (f"{TINY}:NotAModule", r"'NotAModule' .* is a class but not a torch.nn.Module subclass"),
        (f"{TINY}:NUMBER", r"'NUMBER' .* is an int, not an nn.Module class"),
        (f"{TINY}:NeedsArgs", r"NeedsArgs\(\) needs constructor arguments \(hidden\).*def make_model"),
        (f"{TINY}:factory_with_args", r"factory_with_args\(\) needs arguments \(width\)"),
        (f"{TINY}:returns_int", r"returns_int\(\) .* returned int, not a torch.nn.Module"),
        (f"{TINY}:BrokenInit", r"constructing BrokenInit\(\) .* failed: ValueError: bad config$"),
        (str(TINY), r"does not name the model after ':' .*; available: TinyNet"),
        ("model_without_colon", r"does not name the model after ':' \(use path/to/file.py:NAME"),
        (f"{FIXTURES}/nope.py:Net", r"model file '.*nope.py' does not exist"),
        (
            f"{FIXTURES}/raises_on_import.py:Net",
            r"importing .*raises_on_import.py failed: RuntimeError: cannot find",
        ),
        ("no_such_pkg_xyz.models:Net", r"cannot import module 'no_such_pkg_xyz.models'"),
        ("torch.nn:Linear", r"Linear\(\) needs constructor arguments \(in_features, out_features\)"),
        (f"{FIXTURES}/weights.safetensors", r"is a .safetensors file, but optpipe needs the PyTorch model"),
    ],
)
def test_load_model_errors_are_one_readable_line(spec: str, pattern: str) -> None:
    with pytest.raises(UserInputError, match=pattern) as info:
        load_model(spec)
    _one_line(info)


# --- weights -----------------------------------------------------------------------------------


def _tiny_state(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    state = {k: torch.full_like(v, 0.5) for k, v in load_model(f"{TINY}:TinyNet").module.state_dict().items()}
    state.update(changes)
    return state


@pytest.mark.parametrize("form", ["pt", "checkpoint", "safetensors", "dataparallel"])
def test_weights_are_applied(tmp_path: Path, form: str) -> None:
    state = _tiny_state()
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pt"
        if form == "checkpoint":
            torch.save({"state_dict": state, "epoch": 3}, path)
        elif form == "dataparallel":
            torch.save({f"module.{k}": v for k, v in state.items()}, path)
        else:
            torch.save(state, path)
    loaded = load_model(f"{TINY}:TinyNet", weights=path)
    assert torch.all(loaded.module.state_dict()["head.fc.weight"] == 0.5)
    assert loaded.weights_sha256 is not None and len(loaded.weights_sha256) == 64


def test_non_strict_weights_ignore_missing_keys(tmp_path: Path) -> None:
    state = _tiny_state()
    del state["body.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserInputError, match=r"missing keys: body.bias.*--no-strict-weights"):
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "w.pt")
    loaded = load_model(f"{TINY}:TinyNet", weights=tmp_path / "w.pt", strict=False)
    assert torch.all(loaded.module.state_dict()["body.weight"] == 0.5)


def test_mismatching_weights_name_keys_and_shapes(tmp_path: Path) -> None:
    state = _tiny_state(**{"head.fc.weight": torch.zeros(5, 4), "extra.weight": torch.zeros(1)})
    del state["body.bias"]
    torch.save(state, tmp_path / "w.pt")
    pattern = (
        r"weights in .*w.pt do not match TinyNet: missing keys: body.bias; unexpected keys: extra.weight; "
        r"shape mismatch: head.fc.weight expected \(3, 4\) got \(5, 4\)$"
    )
    with pytest.raises(UserInputError, match=pattern) as info:
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "w.pt")
    _one_line(info)
    # Shape mismatches cannot be loaded even when not strict.
    with pytest.raises(UserInputError, match=r"shape mismatch: head.fc.weight"):
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "w.pt", strict=False)


def test_weights_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    torch.save(load_model(f"{TINY}:TinyNet").module, tmp_path / "full.pt")
    with pytest.raises(UserInputError, match=r"full.pt is not a plain state dict .*model.state_dict\(\)"):
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "full.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserInputError, match=r"list.pt holds a list that is not a state dict"):
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "list.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match=r"bad.safetensors is not a valid safetensors file"):
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "bad.safetensors")
    with pytest.raises(UserInputError, match=r"weights file '.*absent.pt' does not exist"):
        load_model(f"{TINY}:TinyNet", weights=tmp_path / "absent.pt")


# --- .pt2 and pickled models -------------------------------------------------------------------


def test_load_exported_program_with_its_example_inputs(tmp_path: Path) -> None:
    model = load_model(f"{TINY}:TinyNet").module
    example = torch.randn(3, 4)
    torch.export.save(torch.export.export(model, (example,)), tmp_path / "tiny.pt2")

    loaded = load_model(str(tmp_path / "tiny.pt2"))
    assert loaded.source_module is None and loaded.weights_sha256 is not None
    found = find_example_inputs(loaded)
    assert found is not None and found.names == ("x",)
    assert torch.equal(found.tensors[0], example)
    torch.testing.assert_close(check_inputs_against_model(loaded.module, found.tensors), model(example))


def test_corrupt_exported_program(tmp_path: Path) -> None:
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match=r"bad.pt2 is not a valid torch.export program"):
        load_model(str(tmp_path / "bad.pt2"))


def test_pickled_model_needs_trust(tmp_path: Path) -> None:
    model = load_model(f"{TINY}:TinyNet").module
    torch.save(model, tmp_path / "full.pth")
    with pytest.raises(
        UserInputError, match=r"pickled PyTorch model.*arbitrary code.*--trust-pickle"
    ) as info:
        load_model(str(tmp_path / "full.pth"))
    _one_line(info)

    loaded = load_model(str(tmp_path / "full.pth"), trust_pickle=True)
    assert type(loaded.module).__name__ == "TinyNet" and not loaded.module.training
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded.module(x), model(x))


def test_state_dict_given_as_model_spec(tmp_path: Path) -> None:
    torch.save(_tiny_state(), tmp_path / "w.pt")
    with pytest.raises(UserInputError, match=r"holds weights \(a state dict\), not a model.*--weights"):
        load_model(str(tmp_path / "w.pt"), trust_pickle=True)


# --- find_example_inputs / check_inputs_against_model ------------------------------------------


def test_example_tensor_is_named_after_forward_parameter() -> None:
    found = find_example_inputs(load_model(f"{TINY}:TinyNet"))
    assert found is not None and found.names == ("x",) and found.tensors[0].shape == (2, 4)
    _tensors, names = found  # unpacks like a tuple
    assert names == ("x",)


def test_example_dict_is_put_in_forward_order_and_input_names_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = load_model(f"{TEXT}:TextNet")
    found = find_example_inputs(loaded)
    assert found is not None and found.names == ("input_ids", "attention_mask")
    assert found.tensors[0].dtype == torch.int64
    check_inputs_against_model(loaded.module, found.tensors, found.names)

    monkeypatch.setattr(loaded.source_module, "INPUT_NAMES", ["ids", "mask"], raising=False)
    found = find_example_inputs(loaded)
    assert found is not None and found.names == ("ids", "mask")


def test_no_example_inputs_gives_none() -> None:
    assert find_example_inputs(load_model("torch.nn:Identity")) is None


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (
            {"input_ids": torch.zeros(1, 2), "token_type_ids": torch.zeros(1, 2)},
            r"skips forward\(\) parameter 'attention_mask'",
        ),
        (
            {"input_ids": torch.zeros(1, 2), "labels": torch.zeros(1)},
            r"keys labels are not forward\(\) parameters",
        ),
        ((torch.zeros(1, 2), 3), r"item 1 is an int, not a torch.Tensor"),
        ("text", r"returned a str; return a tensor, a tuple/list"),
    ],
)
def test_bad_example_inputs(monkeypatch: pytest.MonkeyPatch, value: object, pattern: str) -> None:
    loaded = load_model(f"{TEXT}:TextNet")
    monkeypatch.setattr(loaded.source_module, "example_inputs", lambda: value)
    with pytest.raises(UserInputError, match=pattern):
        find_example_inputs(loaded)


def test_example_inputs_that_raise_or_mismatch_input_names(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(f"{TEXT}:TextNet")
    monkeypatch.setattr(loaded.source_module, "INPUT_NAMES", ["only_one"], raising=False)
    with pytest.raises(UserInputError, match=r"INPUT_NAMES .* has 1 names but there are 2 example inputs"):
        find_example_inputs(loaded)

    def boom() -> None:
        raise OSError("data.npz missing")

    monkeypatch.setattr(loaded.source_module, "example_inputs", boom)
    with pytest.raises(
        UserInputError, match=r"calling example_inputs\(\) .* failed: OSError: data.npz missing"
    ):
        find_example_inputs(loaded)


def test_check_inputs_returns_outputs_and_accepts_optional_params() -> None:
    loaded = load_model(f"{TEXT}:TextNet")
    ids, mask = torch.zeros(2, 5, dtype=torch.int64), torch.ones(2, 5)
    assert check_inputs_against_model(loaded.module, (ids, mask)).shape == (2, 4)
    assert check_inputs_against_model(loaded.module, (ids, mask, ids)).shape == (2, 4)


def test_check_inputs_rejects_wrong_count_and_wrong_shapes() -> None:
    text = load_model(f"{TEXT}:TextNet").module
    with pytest.raises(
        UserInputError, match=r"forward\(\) takes 2 to 3 inputs \(input_ids, attention_mask, "
    ):
        check_inputs_against_model(text, (torch.zeros(2, 5, dtype=torch.int64),))

    tiny = load_model(f"{TINY}:TinyNet").module
    with pytest.raises(
        UserInputError,
        match=r"the model rejected the inputs: RuntimeError: .*\(inputs: x: float32\[2, 7\]\)$",
    ) as info:
        check_inputs_against_model(tiny, (torch.zeros(2, 7),), ["x"])
    _one_line(info)
    with pytest.raises(
        UserInputError, match=r"the model rejected the inputs: .*\(inputs: #0: int64\[2, 4\]\)"
    ):
        check_inputs_against_model(tiny, (torch.zeros(2, 4, dtype=torch.int64),))

"""MLflow logging against a real local tracking store (SQLite), read back with MlflowClient."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

import optpipe
from optpipe.core.errors import EXIT_ENVIRONMENT, MissingDependency
from optpipe.report.mlflow_log import MlflowTarget, log_build_dir

mlflow = pytest.importorskip("mlflow", reason="the optpipe[mlflow] extra is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402

EXPERIMENT = "optpipe-tests"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite tracking store whose experiment keeps artifacts under the test's temp dir."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    return uri


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, toy: ModuleType, store: str) -> tuple[Any, str]:
    """One real build of the toy classifier (fp32 + int8), logged through build(mlflow=...)."""
    out = tmp_path_factory.mktemp("build") / "tiny"
    calib = [toy.example_inputs()[0].numpy() for _ in range(4)]
    report = optpipe.build(
        toy.TinyNet().eval(), toy.example_inputs(), out_dir=out, input_names=["x"], output_names=["logits"],
        precisions=("fp32", "int8"), calib_data=[{"x": c} for c in calib], log=lambda m: None,
        mlflow=MlflowTarget(tracking_uri=store, experiment=EXPERIMENT, run_name="tiny"),
    )
    return report, store


def _runs(uri: str, name: str) -> list[Any]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")


@pytest.mark.slow
def test_build_logs_params_metrics_tags_and_artifacts(built: tuple[Any, str]) -> None:
    report, uri = built
    (run,) = _runs(uri, "tiny")
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["target"] == "cpu" and params["precisions"] == "fp32,int8"
    assert params["version.torch"] == report.environment["torch"]
    assert json.loads(params["inputs"])[0]["name"] == "x"
    # every metric of the flat view went in, with the same values
    expected = report.metrics()
    assert {"fp32.p50_ms", "int8.p99_ms", "int8.cosine_min.logits", "fp32.speedup_vs_torch",
            "int8.size_bytes", "torch.p50_ms"} <= set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert tags["optpipe.passed"] == str(report.passed).lower()
    assert tags["optpipe.target"] == "cpu"
    client = MlflowClient(uri)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "optpipe")}
    assert {"optpipe/report.json", "optpipe/report.html", "optpipe/manifest.json"} <= files
    deployed = [a.path for a in client.list_artifacts(run.info.run_id, "optpipe/artifact")]
    selected = tags["optpipe.selected"]
    assert selected in ("fp32", "int8")  # both pass on this model; none is "selected" without auto, so the tag
    chosen = next(v for v in report.variants if v["precision"] == selected)
    assert deployed == [f"optpipe/artifact/{Path(chosen['artifact']).name}"]
    # the logged report is the one on disk
    local = client.download_artifacts(run.info.run_id, "optpipe/report.json")
    assert json.loads(Path(local).read_text())["variants"][0]["precision"] == "fp32"


@pytest.mark.slow
def test_logs_nested_inside_an_active_run(built: tuple[Any, str]) -> None:
    report, uri = built
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="pipeline") as parent:
        mlflow.log_param("job_param", "kept")
        child_id = log_build_dir(report.out_dir, MlflowTarget(run_name="nested-build"))
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the job's run is still the active one
    child = MlflowClient(uri).get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "job_param" not in child.data.params and child.data.params["target"] == "cpu"
    assert MlflowClient(uri).get_run(parent.info.run_id).data.params == {"job_param": "kept"}


@pytest.mark.slow
def test_cli_mlflow_option_logs_the_build(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from optpipe.cli.main import main

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    model = Path(__file__).parents[1] / "fixtures" / "models" / "toy_models.py"
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["build", f"{model}:TinyNet", "--out", str(out), "--no-benchmark",
                                       "--no-cache", "--mlflow", store])
    assert result.exit_code == 0, result.output
    assert "mlflow: logged run" in result.output
    runs = _runs(store, f"optpipe {model}:TinyNet")
    assert len(runs) == 1 and runs[0].data.tags["optpipe.passed"] == "true"
    assert "fp32.cosine_min.logits" in runs[0].data.metrics and "fp32.p50_ms" not in runs[0].data.metrics


@pytest.mark.slow
def test_unreachable_store_is_exit_3_after_the_build(built: tuple[Any, str], tmp_path: Path) -> None:
    report, _uri = built
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(optpipe.EnvironmentUnavailable, match="logging it to MLflow failed") as info:
        log_build_dir(report.out_dir, MlflowTarget(tracking_uri=f"sqlite:///{blocker}/db.sqlite"))
    assert info.value.exit_code == EXIT_ENVIRONMENT


def test_missing_mlflow_names_the_extra_before_building(
        tmp_path: Path, toy: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees without the package
    with pytest.raises(MissingDependency, match=r"optpipe\[mlflow\]"):
        optpipe.build(toy.TinyNet(), toy.example_inputs(), out_dir=tmp_path / "x", mlflow=True, log=lambda m: None)
    assert not (tmp_path / "x").exists()  # refused before anything was built

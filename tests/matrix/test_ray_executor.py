"""`optpipe build -c FILE --executor ray...` on a real two-node Ray cluster started on this machine.

One cluster per module (Ray takes ~10 s to start on two shared cores): a head
node and a second node, 1 CPU and one ``optpipe_bench`` each, in a temporary
directory. Builds use ``--no-benchmark`` and small models except the one
test that checks where a benchmark ran. Skipped only when ``ray`` is not
installed (``pip install -c constraints.txt -e '.[test]'`` installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from optpipe.cli.build_many import build_many
from optpipe.cli.main import main
from optpipe.matrix.ray_executor import BENCH_RESOURCE, RayExecutor
from optpipe.matrix.tasks import MatrixResult

# ray (and its grpc) is imported when the first test here runs, not at collection: a gRPC runtime loaded
# at collection time lives through every other test module of the session (their forks included).
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                       reason="ray is not installed (pip install 'optpipe[ray]')"),
    pytest.mark.slow,  # a Ray cluster starts, and every test here builds sample models on it
]

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = {
    "digits": ("digits_cnn.py:DigitsCNN", "digits_cnn.safetensors"),
    "text": ("text_encoder.py:TinyTextEncoder", "text_encoder.safetensors"),
    "wine": ("two_heads.py:TwoHeadNet", "two_heads.safetensors"),
}
HEADER = """
exporter = "torchscript"
benchmark = false
dynamic = ["batch=1:8:64"]
threads = 1
precisions = ["fp32", "int8-dynamic"]
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CLIENT_PORT = 0  # chosen by the cluster fixture when it starts, not at collection (minutes before, in a full run)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node (with a Ray Client server on CLIENT_PORT) and a second node, each 1 CPU + optpipe_bench.

    Yields the head's address. ``ray.cluster_utils.Cluster`` starts the same processes as ``ray start --head``
    and ``ray start --address`` and stops only its own (``ray stop`` would stop every Ray on the machine).
    """
    import ray
    from ray.cluster_utils import Cluster

    global CLIENT_PORT
    CLIENT_PORT = free_port()
    base = tempfile.mkdtemp(prefix="optpipe-ray-test-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = base  # the cluster's address file lives here, not in the shared /tmp/ray
    (Path(base) / "ray").mkdir()
    node = {"num_cpus": 1, "resources": {BENCH_RESOURCE: 1}, "temp_dir": f"{base}/ray", "include_dashboard": False}
    ray_cluster = Cluster(initialize_head=True, head_node_args={**node, "ray_client_server_port": CLIENT_PORT})
    try:
        ray_cluster.add_node(**node)
        ray_cluster.wait_for_nodes()
        yield ray_cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        ray_cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(base, ignore_errors=True)


def sample_config(path: Path, out: str, extra: str = "") -> Path:
    text = HEADER + "".join(
        f'\n[[model]]\nname = "{name}"\nspec = "{ROOT}/sample_models/{spec}"\n'
        f'weights = "{ROOT}/sample_models/weights/{weights}"\nout = "{out}/{name}"\n'
        for name, (spec, weights) in SAMPLES.items()
    ) + extra
    path.write_text(text)
    return path


def verdicts(report: dict[str, object]) -> list[tuple[object, ...]]:
    return [(v["precision"], v["status"], v["passed"]) for v in report["variants"]]  # type: ignore[index,union-attr]


def test_three_samples_on_ray_match_in_process(cluster: str, tmp_path: Path) -> None:
    runner = CliRunner()
    local = runner.invoke(main, ["build", "-c", str(sample_config(tmp_path / "local.toml", "local")), "--no-cache",
                                 "--json"])
    assert local.exit_code in (0, 1), local.output
    broken = '\n[[model]]\nname = "broken"\nspec = "nowhere.py:Net"\nout = "ray/broken"\n'
    junit = tmp_path / "junit.xml"
    remote = runner.invoke(main, ["build", "-c", str(sample_config(tmp_path / "ray.toml", "ray", broken)),
                                  "--no-cache", "--json", "--executor", f"ray://127.0.0.1:{CLIENT_PORT}", "--junit",
                                  str(junit)])
    assert remote.exit_code == 2, remote.output  # the broken model's usage error is the worst exit code
    local_doc = json.loads(local.stdout)
    remote_doc = json.loads(remote.stdout)  # ONE JSON document for the whole matrix
    assert remote_doc["executor"] == f"ray (ray://127.0.0.1:{CLIENT_PORT})" and remote_doc["exit_code"] == 2
    by_name = {m["name"]: m for m in remote_doc["builds"]}
    assert by_name["broken"]["exit_code"] == 2 and "nowhere.py" in by_name["broken"]["error"]
    for model in local_doc["builds"]:
        other = by_name[model["name"]]
        assert other["exit_code"] == model["exit_code"]
        assert verdicts(other["report"]) == verdicts(model["report"])
        files = [sorted(f["path"] for f in json.loads((tmp_path / d / model["name"] / "manifest.json")
                                                       .read_text())["files"]) for d in ("local", "ray")]
        assert files[0] == files[1]
        checked = runner.invoke(main, ["verify", str(tmp_path / "ray" / model["name"]), "--json"])
        assert checked.exit_code == 0, checked.output
    nodes = {m["node"]["node_id"] for m in remote_doc["builds"] if m["node"]}
    assert len(nodes) == 2  # 1 CPU per node, builds spread: both nodes built something
    suites = junit.read_text()
    assert suites.count("<testsuite ") == 4 and 'name="optpipe: broken"' in suites and "<error" in suites


#: Run as ``python -c``: SIGINT unblocked and at its default, then exec the command in ``sys.argv[1:]``.
SIGINT_AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)

KILLABLE = '''
"""A tiny model whose first build attempt reports its worker PID and waits to be killed mid-build."""
import os
import time
from pathlib import Path

import torch

PIDS = Path(__file__).with_name("pids.txt")
OUT = Path(__file__).with_name("out")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        staging = list(OUT.glob(".optpipe-partial-tiny-*"))
        if staging and not PIDS.exists():  # mid-build: staged, nothing published yet; first attempt only
            PIDS.write_text(f"{os.getpid()}\\n")
            time.sleep(60)
        return self.fc(x)


def example_inputs():
    torch.manual_seed(0)
    return (torch.randn(2, 4),)
'''


def test_killed_worker_is_retried_and_the_matrix_completes(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "killable.py").write_text(KILLABLE)
    config = tmp_path / "optpipe.toml"
    config.write_text(f'exporter = "torchscript"\nbenchmark = false\nthreads = 1\ncache = false\n\n'
                      f'[[model]]\nname = "tiny"\nspec = "killable.py:Tiny"\nout = "out/tiny"\n\n'
                      f'[[model]]\nname = "wine"\nspec = "{ROOT}/sample_models/two_heads.py:TwoHeadNet"\n'
                      f'weights = "{ROOT}/sample_models/weights/two_heads.safetensors"\nout = "out/wine"\n')
    outcome: list[MatrixResult] = []
    worker = threading.Thread(target=lambda: outcome.append(build_many(config, RayExecutor(address=cluster))))
    worker.start()
    pids = tmp_path / "pids.txt"
    deadline = time.monotonic() + 120
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    first_pid = int(pids.read_text().split()[0])
    assert list((tmp_path / "out").glob(".optpipe-partial-tiny-*")) and not (tmp_path / "out" / "tiny").exists()
    os.kill(first_pid, signal.SIGKILL)  # the Ray worker process building "tiny", mid-build
    worker.join(timeout=300)
    assert outcome, "build_many did not return"
    matrix = outcome[0]
    tiny, wine = matrix.results
    assert matrix.exit_code == 0 and tiny.exit_code == 0 and wine.exit_code == 0
    assert tiny.attempts == 2 and tiny.node is not None and tiny.node.pid != first_pid
    assert CliRunner().invoke(main, ["verify", str(tmp_path / "out" / "tiny")]).exit_code == 0


def test_benchmarked_build_records_the_node_it_was_measured_on(cluster: str, tmp_path: Path) -> None:
    config = tmp_path / "optpipe.toml"
    config.write_text(f'exporter = "torchscript"\ncache = false\n\n[[model]]\nname = "wine"\n'
                      f'spec = "{ROOT}/sample_models/two_heads.py:TwoHeadNet"\n'
                      f'weights = "{ROOT}/sample_models/weights/two_heads.safetensors"\nout = "out/wine"\n')
    import ray

    ray.init(address=cluster, log_to_driver=False)  # build_many uses (and keeps) the caller's connection
    try:
        matrix = build_many(config, RayExecutor())
        node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
    (result,) = matrix.results
    assert result.exit_code == 0, result.log
    (variant,) = result.variants
    assert variant.latency_ms is not None and variant.measured_on is not None
    assert variant.measured_on == result.node and result.node is not None
    assert result.node.node_id in node_ids


def test_two_workers_share_one_cache_directory(cluster: str, tmp_path: Path) -> None:
    """The same model twice on two 1-CPU nodes with one cache: each cacheable pass is computed once."""
    spec, weights = SAMPLES["wine"]
    model = (f'spec = "{ROOT}/sample_models/{spec}"\nweights = "{ROOT}/sample_models/weights/{weights}"\n')
    config = tmp_path / "optpipe.toml"
    config.write_text(f'exporter = "torchscript"\nbenchmark = false\nthreads = 1\ncache_dir = "cache"\n\n'
                      f'[[model]]\nname = "a"\n{model}out = "out/a"\n\n[[model]]\nname = "b"\n{model}out = "out/b"\n')
    matrix = build_many(config, RayExecutor(address=cluster))
    assert matrix.exit_code == 0
    statuses = [{p["name"]: p["status"] for p in r.report["passes"]} for r in matrix.results]  # type: ignore[index]
    for name in ("export", "simplify"):
        assert sorted(s[name] for s in statuses) == ["cached", "ok"]  # one computed it, the other reused it


def test_ctrl_c_cancels_the_outstanding_builds(cluster: str, tmp_path: Path) -> None:
    """SIGINT to `optpipe build -c ... --executor ray:auto` mid-build: exit 130, worker killed, nothing published."""
    import subprocess
    import sys

    (tmp_path / "killable.py").write_text(KILLABLE)
    config = tmp_path / "optpipe.toml"
    config.write_text('exporter = "torchscript"\nbenchmark = false\nthreads = 1\ncache = false\n\n'
                      '[[model]]\nname = "tiny"\nspec = "killable.py:Tiny"\nout = "out/tiny"\n')
    optpipe = str(Path(sys.executable).parent / "optpipe")
    # The driver starts as from a terminal: SIGINT unblocked and at its default. A child inherits its parent's
    # signal mask and ignored signals, and in the whole suite (never alone) the driver once ran to exit 0 as if
    # it never got the SIGINT: the pytest process's state, not optpipe's, is the suspect.
    driver = subprocess.Popen([sys.executable, "-c", SIGINT_AS_FROM_A_TERMINAL, optpipe, "build", "-c", str(config),
                               "--executor", "ray:auto"],
                              env=dict(os.environ, RAY_ADDRESS=cluster), stderr=subprocess.PIPE, text=True)
    pids = tmp_path / "pids.txt"
    deadline = time.monotonic() + 120
    while not pids.exists() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    worker_pid = int(pids.read_text().split()[0])
    signals = [line for line in Path(f"/proc/{driver.pid}/status").read_text().splitlines()
               if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]  # what a failure below should be read with
    driver.send_signal(signal.SIGINT)
    try:  # Ray's shutdown after the cancel can take a minute on a loaded 2-core machine
        _, stderr = driver.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        driver.kill()
        raise
    assert driver.returncode == 130 and "interrupted" in stderr, (driver.returncode, signals, stderr[-2000:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ray.cancel(force=True) kills the worker that was building
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"worker {worker_pid} still runs after Ctrl-C")
    assert not (tmp_path / "out" / "tiny").exists()


def test_executor_ray_starts_a_local_ray_for_the_run_and_removes_it(tmp_path: Path) -> None:
    """`--executor ray`: a local Ray with optpipe_bench, so a benchmarked build runs (holding both CPUs)."""
    spec, weights = SAMPLES["wine"]
    config = tmp_path / "optpipe.toml"
    config.write_text(f'exporter = "torchscript"\ncache = false\n\n[[model]]\nname = "wine"\n'
                      f'spec = "{ROOT}/sample_models/{spec}"\nweights = "{ROOT}/sample_models/weights/{weights}"\n'
                      f'out = "out/wine"\n')
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("optpipe-ray-*"))
    result = CliRunner().invoke(main, ["build", "-c", str(config), "--executor", "ray", "--json"],
                                env={"OPTPIPE_RAY_NUM_CPUS": "2", "RAY_ADDRESS": None})
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.stdout)["builds"]
    assert model["variants"][0]["latency_ms"] is not None and model["variants"][0]["measured_on"]["node_id"]
    assert set(temp.glob("optpipe-ray-*")) - before == set()  # the run's Ray directory is gone
    import ray

    assert not ray.is_initialized()

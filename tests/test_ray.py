"""`edgeqwen batch --ray` and the Ray Data class (edgeqwen/integrations/ray.py) on a real local Ray cluster
(one per module: 2 CPUs, a 200 MB object store). The reference is the local `edgeqwen batch` on the same
input and seed (itself tested against Model.generate / Model.chat in test_batch.py): every record must be
the same line, byte for byte, once the fields that depend on timing or on which items shared a replica are
left out (timings, seconds, cached_tokens). A replica SIGKILLed in the middle of a batch and a driver
SIGKILLed in the middle of a run must both end with every id exactly once. The CLI refuses in one line
without Ray or with an address nobody answers at."""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import importlib.util

import pytest

from conftest import missing_reference
from edgeqwen.integrations.ray import EdgeQwenBatch, ship_model     # imports ray only when used

if importlib.util.find_spec("ray") is None:        # ray itself is imported by the cluster fixture (~3 s)
    missing_reference("Ray is not installed (pip install -e .[test], or .[ray])", module_level=True)

VOLATILE = ("timings", "seconds", "cached_tokens")
SYSTEM = "You are a careful assistant who answers briefly and precisely, in plain English."
COMMON = ("--seed", 7, "-P", 3, "-c", 96, "-t", 1)          # the same run, locally and on the cluster


def _items():
    prompts = [{"id": f"p{i}", "prompt": f"Item {i}: the quick brown fox number {i * 7} jumps",
                "max_tokens": 6 + i % 5} for i in range(12)]
    chats = [{"id": f"c{i}", "messages": [{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
              "max_tokens": 8} for i in range(4)]
    return prompts + chats


def _line(rec: dict) -> str:
    """A record as its output line without the fields that may differ between equal runs (order kept)."""
    return json.dumps({k: v for k, v in rec.items() if k not in VOLATILE}, ensure_ascii=False)


def _lines_by_id(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)                                  # every line whole
        key = json.dumps(rec["id"], sort_keys=True)
        assert key not in out, f"id {key} written twice"
        out[key] = _line(rec)
    return out


def _cli(*args, script=None, env=None):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-c", script, "batch"] if script else [sys.executable, "-m", "edgeqwen", "batch"]
    return subprocess.Popen([*cmd, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def model_path(gguf_file):
    return gguf_file("untied", "q8_0")


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory):
    """The items, plus a line that is not JSON (its error record is the driver's, as locally) and a prompt
    longer than the context (its error record, with its line number, comes from a replica)."""
    inp = tmp_path_factory.mktemp("ray_in") / "in.jsonl"
    lines = [json.dumps(x) for x in _items()]
    lines.insert(5, "{this is not json")
    lines.append(json.dumps({"id": "long", "prompt": "many words " * 80}))
    inp.write_text("\n".join(lines) + "\n")
    return inp


@pytest.fixture(scope="module")
def local(model_path, batch_input):
    """The reference: the local command's records, by id."""
    out = batch_input.parent / "local.jsonl"
    p = _cli(batch_input, "-m", model_path, "-o", out, *COMMON)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return _lines_by_id(out)


def _ray_processes(mark: str) -> list[int]:
    """Processes (other than this one) whose environment carries `mark`: the cluster's, and its workers."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if mark.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster started by this process (2 CPUs, small object store, its own temporary directory);
    its GCS address, for other drivers. Ray's defaults otherwise: token authentication, the token in
    ~/.ray/auth_token (made if missing), and RAY_AUTH_MODE=token set in this process for the drivers it
    starts. Shut down at the end, even after a failure; no process of it may be left (they are found by
    a mark in their environment)."""
    import ray
    import ray.data  # noqa: F401

    mark = f"eqtest-{secrets.token_hex(6)}"
    temp = tempfile.mkdtemp(prefix="eqray", dir="/tmp")         # short: Ray's socket paths must stay < 108 chars
    env = {"RAY_USAGE_STATS_ENABLED": "0", "EDGEQWEN_TEST_RAY": mark, "NUMBA_NUM_THREADS": "1",
           "EDGEQWEN_CACHE": str(tmp_path_factory.mktemp("ray_cache"))}    # where replicas put a shipped model
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, _temp_dir=temp,
                     logging_level=logging.WARNING)
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            deadline = time.monotonic() + 20
            while _ray_processes(mark) and time.monotonic() < deadline:
                time.sleep(0.5)
            leaked = _ray_processes(mark)
            for pid in leaked:
                os.kill(pid, signal.SIGKILL)
            assert not leaked, f"Ray processes left after shutdown: {leaked}"


# ---------------------------------------------------------------- refusals (no cluster needed)

_NO_RAY = """
import sys
sys.modules["ray"] = None          # as if Ray were not installed: `import ray` raises ImportError
from edgeqwen.cli import main
sys.argv[0] = "edgeqwen"
main()
"""


def test_cli_without_ray_refuses_in_one_line(model_path, batch_input, tmp_path):
    out = tmp_path / "out.jsonl"
    p = _cli(batch_input, "-m", model_path, "-o", out, "--ray", script=_NO_RAY)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith("error: ") and 'pip install "edgeqwen[ray]"' in err, err
    assert not out.exists()
    p = _cli(batch_input, "-m", model_path, "-o", out, "--replicas", 2)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and err.strip().endswith("--replicas and --cpus-per-replica need --ray"), err


def test_cli_unreachable_address_refuses_in_one_line(model_path, batch_input, tmp_path):
    with socket.socket() as s:                  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.jsonl"
    for address, message in ((f"127.0.0.1:{port}", f"cannot reach a Ray cluster at 127.0.0.1:{port}: "),
                             ("no-port-here", "expected HOST:PORT")):
        t0 = time.monotonic()
        p = _cli(batch_input, "-m", model_path, "-o", out, "--ray", address)
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1 and err.count("\n") == 1 and message in err, err
        assert "Traceback" not in err and not out.exists()
        assert time.monotonic() - t0 < 120              # at once, not Ray's minutes of retries


# ---------------------------------------------------------------- on the cluster

_GATED = """
import os, sys, time
from edgeqwen.batch import OutputFile
_write, _n, _gate = OutputFile.write, [0], int(os.environ["EDGEQWEN_TEST_GATE"])
def write(self, record):            # record number `gate` waits (unwritten) for the SIGKILL
    _n[0] += 1
    while _n[0] >= _gate:
        time.sleep(0.05)
    _write(self, record)
OutputFile.write = write
from edgeqwen.cli import main
sys.argv[0] = "edgeqwen"
main()
"""


def test_cli_driver_killed_then_resumed_equals_local(cluster, model_path, batch_input, local, tmp_path):
    """Driver SIGKILLed after 5 records (its 6th waits for the signal), then the same command again (with
    one replica this time): every id once, each record the local command's line."""
    out = tmp_path / "out.jsonl"
    args = (batch_input, "-m", model_path, "-o", out, *COMMON, "--ray", cluster)
    p = _cli(*args, "--replicas", 2, "--cpus-per-replica", 1, script=_GATED, env={"EDGEQWEN_TEST_GATE": "6"})
    deadline = time.monotonic() + 300
    while not (out.exists() and out.read_bytes().count(b"\n") >= 5):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate(timeout=60)
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    first = _lines_by_id(out)
    assert len(first) == 5
    p = _cli(*args, "--replicas", 1)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert f"resuming: 5 of {len(local)} items" in err, err
    assert _lines_by_id(out) == local                          # all ids, once, the same lines


class _GatedBatch(EdgeQwenBatch):
    """The first replica to get the batch holding `victim` writes its pid to `marker` and waits there to be
    SIGKILLed; the replica Ray restarts runs the batch again (and notes its pid)."""

    def __init__(self, model, *, marker, victim, **options):
        super().__init__(model, **options)
        self.marker, self.victim = Path(marker), victim

    def __call__(self, batch):
        if self.victim in batch["id"].to_pylist():
            if not self.marker.exists():
                tmp = self.marker.with_suffix(".tmp")
                tmp.write_text(str(os.getpid()))
                os.replace(tmp, self.marker)
                while True:
                    time.sleep(0.05)
            self.marker.with_suffix(".retried").write_text(str(os.getpid()))
        return super().__call__(batch)


def test_pipeline_replica_killed_mid_batch_is_retried(cluster, model_path, local, tmp_path):
    """A user's Ray Data pipeline (read_json -> map_batches(EdgeQwenBatch) with a shipped model): the replica
    running p6's batch is SIGKILLed in the middle of it; Ray restarts it and retries the batch; the records
    are the local command's, each id once."""
    import ray

    inp = tmp_path / "items.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in _items()))
    marker = tmp_path / "victim.pid"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])     # _GatedBatch: the workers lack this module
    ds = ray.data.read_json(str(inp), num_cpus=0).map_batches(        # the replicas take both CPUs
        _GatedBatch, batch_size=4, batch_format="pyarrow", num_cpus=1, compute=ray.data.ActorPoolStrategy(size=2),
        fn_constructor_kwargs=dict(model=ship_model(model_path), marker=str(marker), victim="p6", seed=7, parallel=3,
                                   ctx_size=96))
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("rows", ds.take_all()), daemon=True)
    runner.start()
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert runner.is_alive() and time.monotonic() < deadline, "the victim's batch never started"
        time.sleep(0.05)
    victim = int(marker.read_text())
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive(), "the pipeline did not finish after the replica was killed"
    assert int(marker.with_suffix(".retried").read_text()) != victim
    got = {}
    for row in result["rows"]:
        rec = json.loads(row["record"])
        key = json.dumps(rec["id"], sort_keys=True)
        assert key not in got, f"id {key} twice"
        got[key] = _line(rec)
    assert got == {k: v for k, v in local.items() if k not in ("6", '"long"')}   # the items of `inp`

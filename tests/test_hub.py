"""`edgeqwen pull / list / rm` and `-m REPO:QUANT` without internet: a local HTTP server on 127.0.0.1
implements the Hub endpoints huggingface_hub calls (model info with file sizes and sha256, HEAD and
ranged GET of /resolve/), and the commands run as subprocesses with HF_ENDPOINT pointing at it and a
temporary HF_HOME. The expected sha256 and bytes come from the served files themselves (hashlib),
the listing from huggingface_hub's own cache scan."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = "Qwen/Qwen3-Tiny-GGUF"
SHA = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """The served repositories: {repo: {filename: bytes}}, and switches for the tests."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.corrupt: set[str] = set()      # files served with one byte changed (the API lists the true sha)
        self.stall_after: int | None = None  # bytes of a GET after which the server stops sending (and waits)
        self.ranges: list[str] = []          # Range headers of the GETs received
        self.release = threading.Event()


def _handler(hub: Hub):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _json(self, obj, code=200, error_code=None):
            body = json.dumps(obj).encode()
            self.send_response(code)
            if error_code:                       # as the Hub does: huggingface_hub maps it to its exceptions
                self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, head: bool):
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
            files = hub.repos.get(m[1]) if m else None
            if not files or m[3] not in files:
                return self._json({"error": "Entry not found"}, 404, "EntryNotFound")
            data = files[m[3]]
            sha = hashlib.sha256(data).hexdigest()
            if m[3] in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and not head:
                hub.ranges.append(rng)
                start = int(re.match(r"bytes=(\d+)-", rng)[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            body = data[start:]
            if hub.stall_after is not None and not start:
                self.wfile.write(body[:hub.stall_after])
                self.wfile.flush()
                hub.release.wait(60)            # the client is killed meanwhile
                return
            self.wfile.write(body)

        def do_HEAD(self):
            self._file(True)

        def do_GET(self):
            m = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/[^/?]+)?(?:\?.*)?$", self.path)
            if m:
                files = hub.repos.get(m[1])
                if files is None:
                    return self._json({"error": "Repository not found"}, 404, "RepoNotFound")
                sib = [{"rfilename": f, "size": len(d),
                        "lfs": {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                       for f, d in files.items()]
                return self._json({"id": m[1], "modelId": m[1], "sha": SHA, "siblings": sib, "private": False,
                                   "tags": [], "downloads": 0, "likes": 0})
            self._file(False)

    return H


def split_gguf(src: Path, out: Path, max_tensors: int) -> list[Path]:
    """`src` rewritten by gguf-py's own GGUFWriter as a split model (llama.cpp's NAME-0000i-of-0000n.gguf
    files with the split.* keys), as `convert_hf_to_gguf.py --split-max-tensors` makes them."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents(), split_max_tensors=max_tensors)
    for name, f in r.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            w.add_key_value(name, f.contents(), f.types[0],
                            sub_type=f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(out.parent.glob(out.stem + "-*-of-*.gguf"))


@pytest.fixture(scope="module")
def shards(gguf_file, tmp_path_factory):
    return split_gguf(Path(gguf_file("tiny", "q8_0")), tmp_path_factory.mktemp("split") / "Tiny-Q8_0.gguf", 10)


@pytest.fixture(scope="module")
def hub(gguf_file, shards):
    h = Hub()
    tiny = Path(gguf_file("tiny", "q8_0")).read_bytes()
    h.repos["Qwen/Split-GGUF"] = {p.name: p.read_bytes() for p in shards}
    h.repos[REPO] = {"Qwen3-Tiny-Q8_0.gguf": tiny, "Qwen3-Tiny-Q4_K_M.gguf": tiny[:4096] + b"\0" * 5000,
                     "README.md": b"# tiny\n"}
    h.repos["Qwen/Big-GGUF"] = {"Big-Q8_0.gguf": os.urandom(16 << 20)}     # > huggingface_hub's 10 MiB chunk
    h.repos["Qwen/Bad-GGUF"] = {"Bad-Q8_0.gguf": os.urandom(200_000)}
    h.corrupt.add("Bad-Q8_0.gguf")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(h))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    h.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield h
    h.release.set()
    srv.shutdown()


@pytest.fixture(scope="module")
def env(hub, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5", "NO_PROXY": "127.0.0.1",
            "HF_TOKEN": "", "HF_HUB_OFFLINE": "0"}


def edgeqwen(env, *args, timeout=600):          # a cold numba cache compiles first
    return subprocess.run([sys.executable, "-m", "edgeqwen", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines and lines[-1].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def test_pull_verifies_and_loads(hub, env, gguf_file):
    r = edgeqwen(env, "pull", f"{REPO}:q8_0")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.read_bytes() == hub.repos[REPO]["Qwen3-Tiny-Q8_0.gguf"]
    assert Path(env["HF_HOME"]) in path.parents          # huggingface_hub's cache, not a copy elsewhere
    # pulled: -m REPO:QUANT is the same model as the file (no network needed: offline)
    r2 = edgeqwen({**env, "HF_HUB_OFFLINE": "1"}, "run", "-m", f"{REPO}:Q8_0", "-p", "Hi", "-n", 4,
                  "--temperature", 0, "-t", 1)
    assert r2.returncode == 0, r2.stderr
    from edgeqwen.api import load

    assert r2.stdout == load(gguf_file("tiny", "q8_0"), threads=1).generate("Hi", max_tokens=4, temperature=0).text + "\n"


def test_serve_takes_pulled_models(hub, env):
    """serve -m REPO:QUANT (and NAME=REPO:QUANT) serves the pulled file; one not pulled is one error line."""
    assert edgeqwen(env, "pull", f"{REPO}:q8_0").returncode == 0
    off = {**env, "HF_HUB_OFFLINE": "1"}
    code = ("import json; from edgeqwen.server.command import _model_specs; "
            f"print(json.dumps(_model_specs(('{REPO}:Q8_0', 'tiny={REPO}:Q8_0'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=off, timeout=120)
    assert r.returncode == 0, r.stderr
    specs = json.loads(r.stdout)
    assert set(specs) == {f"{REPO}:Q8_0", "tiny"}
    for path in specs.values():
        assert Path(path).read_bytes() == hub.repos[REPO]["Qwen3-Tiny-Q8_0.gguf"]
    one_error(edgeqwen(off, "serve", "-m", "Qwen/Never-Pulled-GGUF:Q8_0", "--port", 0), "not pulled yet")


def test_list_and_rm(hub, env):
    assert edgeqwen(env, "pull", f"{REPO}:Q4_K_M").returncode == 0
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir(Path(env["HF_HOME"]) / "hub")
    on_disk = {f.file_name: f for r in cache.repos for rev in r.revisions for f in rev.files}
    r = edgeqwen(env, "list")
    assert r.returncode == 0, r.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in r.stdout.splitlines()[1:]}
    assert set(rows) >= {(REPO, "Q8_0"), (REPO, "Q4_K_M")}
    q4 = rows[(REPO, "Q4_K_M")]
    assert q4[-1] == str(on_disk["Qwen3-Tiny-Q4_K_M.gguf"].file_path)
    r = edgeqwen(env, "rm", f"{REPO}:Q4_K_M")
    assert r.returncode == 0, r.stderr
    after = edgeqwen(env, "list").stdout
    assert "Q4_K_M" not in after and "Q8_0" in after
    one_error(edgeqwen({**env, "HF_HUB_OFFLINE": "1"}, "run", "-m", f"{REPO}:Q4_K_M", "-n", 1), "pull")


def test_ambiguous_quant_lists_choices(hub, env):
    line = one_error(edgeqwen(env, "pull", REPO), "choose one", "Q8_0", "Q4_K_M")
    assert "README" not in line
    one_error(edgeqwen(env, "pull", f"{REPO}:Q6_K"), "no GGUF model 'Q6_K'", "Q8_0", "Q4_K_M")
    one_error(edgeqwen(env, "pull", "Qwen/Nothing-GGUF:Q8_0"), "no such repository")


def test_corrupted_download_refused(hub, env):
    line = one_error(edgeqwen(env, "pull", "Qwen/Bad-GGUF:Q8_0"), "corrupt", "sha256")
    assert "deleted" in line
    blobs = list((Path(env["HF_HOME"]) / "hub").glob("models--Qwen--Bad-GGUF/blobs/*"))
    assert not blobs                                       # nothing left behind


def test_resume_after_killed_transfer(hub, env):
    data = hub.repos["Qwen/Big-GGUF"]["Big-Q8_0.gguf"]
    hub.stall_after, hub.ranges[:] = 12 << 20, []         # one 10 MiB chunk gets written, then nothing
    p = subprocess.Popen([sys.executable, "-m", "edgeqwen", "pull", "Qwen/Big-GGUF:Q8_0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blobs = Path(env["HF_HOME"]) / "hub" / "models--Qwen--Big-GGUF" / "blobs"
    deadline = time.monotonic() + 60
    part = []
    while time.monotonic() < deadline:
        part = [b for b in blobs.glob("*.part") if b.stat().st_size >= 10 << 20] if blobs.is_dir() else []
        if part:
            break
        time.sleep(0.1)
    p.kill()
    p.wait()
    hub.stall_after = None
    assert part, "the transfer never got going"
    r = edgeqwen(env, "pull", "Qwen/Big-GGUF:Q8_0")
    assert r.returncode == 0, r.stderr
    assert hub.ranges == [f"bytes={10 << 20}-"]            # resumed where the killed transfer stopped
    assert Path(r.stdout.strip().splitlines()[-1]).read_bytes() == data


def test_offline_uses_cache_and_unreachable_hub_is_one_line(hub, env):
    assert edgeqwen(env, "pull", f"{REPO}:Q8_0").returncode == 0
    off = {**env, "HF_HUB_OFFLINE": "1"}
    r = edgeqwen(off, "pull", f"{REPO}:Q8_0")             # already there: no network needed
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip().splitlines()[-1]).read_bytes() == hub.repos[REPO]["Qwen3-Tiny-Q8_0.gguf"]
    one_error(edgeqwen(off, "pull", "Qwen/Big-GGUF-Other:Q8_0"), "not pulled")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"     # bound, not listening: connection refused
    t0 = time.monotonic()
    r = edgeqwen({**env, "HF_ENDPOINT": dead}, "pull", "Qwen/Other-GGUF:Q8_0")
    s.close()
    one_error(r, "cannot reach the Hub", dead)
    assert time.monotonic() - t0 < 100                     # no endless retrying


def test_sharded_model_loads_as_one(hub, env, gguf_file, shards):
    """A model split in 3 files by gguf-py: opened from its first file it is the same model (same logits
    as the single file); pull fetches every part; list shows one model; another part alone is refused."""
    import numpy as np

    from edgeqwen.api import load
    from edgeqwen.errors import EdgeQwenError

    assert len(shards) == 3
    one = load(gguf_file("tiny", "q8_0"), threads=1, ctx_size=32)
    split = load(shards[0], threads=1, ctx_size=32)
    ids = one.tokenize("The capital of France is")
    assert np.array_equal(one.logits(ids), split.logits(ids))
    with pytest.raises(EdgeQwenError, match="open its first file"):
        load(shards[1])
    r = edgeqwen(env, "pull", "Qwen/Split-GGUF:Q8_0")
    assert r.returncode == 0, r.stderr
    first = Path(r.stdout.strip().splitlines()[-1])
    assert first.name == shards[0].name
    assert [p.read_bytes() for p in sorted(first.parent.glob("Tiny-Q8_0-*"))] == [p.read_bytes() for p in shards]
    rows = [line.split() for line in edgeqwen(env, "list").stdout.splitlines() if line.startswith("Qwen/Split-GGUF")]
    assert len(rows) == 1 and rows[0][1] == "Q8_0"

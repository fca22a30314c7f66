"""Load on `edgeqwen serve`: N concurrent streaming clients, each sending R requests one after the
other; the same load on llama.cpp's server (llama-cpp-python's `llama_cpp.server`) for the ratio.

    python benchmarks/serve_load.py -m MODEL.gguf [--clients 1,4,16] [--requests 2] [--max-tokens 64]
        [--endpoint completions|chat] [--threads 2] [--ctx-size 2048] [--llama] [--url URL]

Per level: aggregate generated tokens/s (completion tokens of all requests / wall time), time to
first token p50 / p95 (request sent -> first streamed text), errors. Two short requests run first,
unmeasured (numba compiles the kernels on first use). Tokens are the servers' own
`usage.completion_tokens` (stream_options.include_usage), else the number of text chunks. A random
weight model can end early on an end-of-text token; the aggregate counts what was generated.

edgeqwen runs with --parallel = the largest client count (continuous batching); llama_cpp.server
serves one request at a time, the others wait (`--interrupt_requests False`: by default a new request
ends the running stream), so its figures show queueing, not batching.
`--url` measures a server that is already running instead of starting one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0:4]} exited with {proc.returncode} (log: {log.name})")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{cmd[0:4]} did not start (log: {log.name})")


async def one_request(client: httpx.AsyncClient, endpoint: str, model: str, max_tokens: int, i: int) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.7, "seed": i,
            "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = PROMPT
        path = "/v1/completions"
    t0 = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": f"{r.status_code} {r.text[:100]}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    return {"error": str(ev["error"])[:100]}
                usage = ev.get("usage") or usage
                for c in ev.get("choices") or []:
                    d = c.get("delta") or {}
                    text = c.get("text") or d.get("content") or d.get("reasoning_content")
                    if text:
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": ttft, "tokens": tokens}


async def level(url: str, endpoint: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    async def client_loop(c: httpx.AsyncClient, k: int) -> list[dict]:
        return [await one_request(c, endpoint, model, max_tokens, k * requests + j) for j in range(requests)]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as c:
        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client_loop(c, k) for k in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in ok)
    q = statistics.quantiles(ttfts, n=20, method="inclusive") if len(ttfts) >= 2 else ttfts * 19
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok), "tokens": tokens,
            "seconds": round(wall, 2), "tok_s": round(tokens / wall, 2),
            "ttft_p50": round(statistics.median(ttfts), 3) if ttfts else None,
            "ttft_p95": round(q[18], 3) if ttfts else None,
            "first_error": next((r["error"] for r in results if "error" in r), None)}


def model_id(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def run_all(name: str, url: str, args) -> list[dict]:
    model = model_id(url)
    asyncio.run(level(url, args.endpoint, model, 2, 1, 4))      # warm-up: kernels compiled, caches touched
    rows = []
    for n in args.clients:
        row = {"server": name, **asyncio.run(level(url, args.endpoint, model, n, args.requests, args.max_tokens))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="GGUF file (default: edgeqwen's demo model)")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ctx-size", type=int, default=2048)
    ap.add_argument("--llama", action="store_true", help="also measure llama_cpp.server on the same file")
    ap.add_argument("--url", help="measure this running server instead of starting edgeqwen serve")
    args = ap.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    if args.url:
        run_all(args.url, args.url, args)
        return
    if args.model is None:
        from edgeqwen.demo import demo_model_path
        args.model = str(demo_model_path())
    servers = [("edgeqwen", lambda port: [sys.executable, "-m", "edgeqwen.server", "-m", args.model, "--port",
                                          str(port), "--parallel", str(max(args.clients)), "-c", str(args.ctx_size),
                                          "-t", str(args.threads), "--log-level", "warning",
                                          "--max-queue", str(max(args.clients) * args.requests)])]
    if args.llama:
        servers.append(("llama_cpp.server", lambda port: [
            sys.executable, "-m", "llama_cpp.server", "--model", args.model, "--port", str(port),
            "--n_ctx", str(args.ctx_size), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
            "--interrupt_requests", "False"]))       # its default: a new request cuts the running stream off
    print(json.dumps({"model": args.model, "endpoint": args.endpoint, "max_tokens": args.max_tokens,
                      "requests_per_client": args.requests, "threads": args.threads,
                      "load_average": os.getloadavg()}), flush=True)
    for name, cmd in servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(f"/tmp/serve_load-{name}-{port}.log", "w") as log:
            proc = start(cmd(port), url, log)
            try:
                run_all(name, url, args)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()

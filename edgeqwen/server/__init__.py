"""`edgeqwen serve`: an OpenAI-compatible HTTP server with continuous batching and a chat page.

    app.py       routes (Starlette): /v1/chat/completions, /v1/completions, /v1/models, /health,
                 /tokenize, /detokenize, and the page at /
    schemas.py   request checks and OpenAI-shaped responses and errors
    engine.py    one scheduling thread per loaded model over its KV-cache slots; the model pool
    static/      index.html, the chat page (one file, no external resources)
"""
from __future__ import annotations

import ipaddress
import logging
import sys

__all__ = ["serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(models: dict[str, str], host: str = "127.0.0.1", port: int = 8080, *, api_key: str | None = None,
          cors: list[str] | None = None, parallel: int = 4, ctx_size: int | None = None, threads: int | None = None,
          max_loaded: int = 1, max_queue: int = 64, max_tokens: int | None = None, max_body: int | None = None,
          sampling: dict | None = None, log_level: str = "info", cache_type: str = "f16") -> None:
    """Run the server until SIGTERM / Ctrl-C. `models`: name -> GGUF path; the first is loaded now
    (a bad file fails at start), the others on first use. `sampling`: SamplingParams fields used when
    a request does not set them."""
    import uvicorn

    from .app import MAX_BODY, create_app
    from .engine import ModelPool

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("edgeqwen.server")
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, log_level.upper(), logging.INFO))
    if not is_loopback(host) and not api_key:
        print(f"warning: listening on {host} without --api-key: anyone who can reach this address can use the "
              f"models", file=sys.stderr)
    if sampling:
        from ..sampling import SamplingParams
        SamplingParams(**sampling).validate()
    pool = ModelPool(models, threads=threads, ctx_size=ctx_size, parallel=parallel, max_loaded=max_loaded,
                     max_queue=max_queue, max_tokens=max_tokens, sampling=sampling, cache_type=cache_type)
    from ..errors import EdgeQwenError
    from .schemas import APIError
    try:
        pool.get(None)                    # the first model now: a bad file is one error line at start
    except APIError as e:
        raise EdgeQwenError(e.message) from None
    app = create_app(pool, api_key=api_key, cors=cors, max_body=max_body or MAX_BODY)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            pool.close(wait=False)        # streams in flight end with an error event, waiters with 503
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=10, server_header=False)
    try:
        _Server(config).run()
    finally:
        pool.close()

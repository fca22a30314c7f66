"""The HTTP routes (Starlette): the OpenAI-compatible API, /health, /tokenize, /detokenize and the
chat page. Requests are read (size-limited), authenticated and checked here; only checked jobs
reach an engine thread (engine.py)."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import EdgeQwenError, one_line
from ..inputs import check_value
from .engine import Job, ModelPool
from .schemas import APIError, ChatShaper, CompletionShaper, bad, parse_chat, parse_completion

log = logging.getLogger("edgeqwen.server")
MAX_BODY = 8 * 2**20
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _error_event(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class _Stream(StreamingResponse):
    """An SSE response that frees the job's slot however it ends: done, client gone (the write
    fails), or the server shutting down."""

    def __init__(self, events, job: Job):
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()
            await self.body_iterator.aclose()


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class Server:
    """The routes over a ModelPool, with the API key and body-size limit."""

    def __init__(self, pool: ModelPool, api_key: str | None = None, max_body: int = MAX_BODY):
        self.pool, self.max_body = pool, max_body
        self.key = api_key.encode("utf-8") if api_key else None
        self.page = resources.files("edgeqwen.server").joinpath("static/index.html").read_text("utf-8")

    # -- request plumbing
    def check_key(self, request: Request) -> None:
        if self.key is None:
            return
        h = request.headers.get("authorization", "")
        token = h[7:].strip() if h[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.key):
            raise APIError(401, "invalid or missing API key (send the header 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    async def read_json(self, request: Request):
        self.check_key(request)
        cl = request.headers.get("content-length", "")
        if cl.isdigit() and int(cl) > self.max_body:
            raise APIError(413, f"the request body has {cl} bytes, more than the limit of {self.max_body}",
                           code="request_too_large")
        parts, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > self.max_body:
                raise APIError(413, f"the request body is larger than the limit of {self.max_body} bytes",
                               code="request_too_large")
            parts.append(chunk)
        try:
            body = json.loads(b"".join(parts).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise bad(f"the request body is not UTF-8: byte {e.object[e.start]:#04x} at offset {e.start}") from None
        except RecursionError:
            raise bad("the request body is nested too deeply") from None
        except ValueError as e:         # JSONDecodeError, or an integer with too many digits
            raise bad(f"the request body is not valid JSON: {one_line(str(e), 200)}") from None
        try:
            check_value(body, "the request")
        except EdgeQwenError as e:
            raise bad(str(e)) from None
        return body

    async def engine_for(self, body):
        name = body.get("model") if isinstance(body, dict) else None
        if name is not None and not isinstance(name, str):
            raise bad(f"'model' must be a string, got {type(name).__name__}", "model")
        return await run_in_threadpool(self.pool.get, name)

    @staticmethod
    async def next_event(job: Job, request: Request) -> dict | None:
        """The job's next event; None when the (non-streaming) client went away meanwhile."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), 1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return None

    # -- routes
    async def index(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
               f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(self.page.replace("__NONCE__", nonce),
                            headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer"})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": self.pool.status()})

    async def models(self, request: Request) -> Response:
        self.check_key(request)
        data = [{"id": n, "object": "model", "created": self.pool.created, "owned_by": "edgeqwen"}
                for n in self.pool.paths]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        self.check_key(request)
        name = self.pool.resolve(request.path_params["name"])
        return JSONResponse({"id": name, "object": "model", "created": self.pool.created, "owned_by": "edgeqwen"})

    async def chat(self, request: Request) -> Response:
        body = await self.read_json(request)
        engine = await self.engine_for(body)
        req = parse_chat(body, engine.m.config.n_vocab)
        job = await run_in_threadpool(engine.chat_job, req, asyncio.get_running_loop())
        engine.submit(job)
        sh = ChatShaper(engine.name)
        if req.stream:
            return _Stream(self._chat_stream(job, sh, req.include_usage), job)
        try:
            while True:
                ev = await self.next_event(job, request)
                if ev is None:
                    return Response(status_code=499)
                if ev["type"] == "error":
                    raise APIError(503 if "shutting down" in ev["message"] else 500, ev["message"])
                if ev["type"] == "done":
                    return JSONResponse(sh.whole(ev["content"], ev["reasoning"], ev["tool_calls"],
                                                 ev["finish_reason"], ev["usage"]))
        finally:
            job.cancel()

    async def _chat_stream(self, job: Job, sh: ChatShaper, with_usage: bool):
        try:
            yield _sse(sh.chunk({"role": "assistant", "content": ""}, with_usage=with_usage))
            while True:
                ev = await job.events.get()
                if ev["type"] == "error":
                    yield _sse(_error_event(ev["message"]))
                    break
                if ev["type"] == "done":
                    yield _sse(sh.chunk({}, ev["finish_reason"], with_usage=with_usage))
                    if with_usage:
                        yield _sse(sh.chunk(None, usage_=ev["usage"], with_usage=True))
                    break
                delta = {}
                if ev["reasoning"]:
                    delta["reasoning_content"] = ev["reasoning"]
                if ev["content"]:
                    delta["content"] = ev["content"]
                if ev["tool_calls"]:
                    delta["tool_calls"] = ev["tool_calls"]
                yield _sse(sh.chunk(delta, with_usage=with_usage))
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()                    # the client went away (or we are done): free the slot

    async def completions(self, request: Request) -> Response:
        body = await self.read_json(request)
        engine = await self.engine_for(body)
        req = parse_completion(body, engine.m.config.n_vocab)
        job = await run_in_threadpool(engine.completion_job, req, asyncio.get_running_loop())
        engine.submit(job)
        sh = CompletionShaper(engine.name)
        if req.stream:
            return _Stream(self._completion_stream(job, sh, req.include_usage), job)
        parts = []
        try:
            while True:
                ev = await self.next_event(job, request)
                if ev is None:
                    return Response(status_code=499)
                if ev["type"] == "error":
                    raise APIError(503 if "shutting down" in ev["message"] else 500, ev["message"])
                if ev["type"] == "delta":
                    parts.append(ev["text"])
                else:
                    return JSONResponse(sh.obj("".join(parts), ev["finish_reason"], ev["usage"], True))
        finally:
            job.cancel()

    async def _completion_stream(self, job: Job, sh: CompletionShaper, with_usage: bool):
        try:
            while True:
                ev = await job.events.get()
                if ev["type"] == "error":
                    yield _sse(_error_event(ev["message"]))
                    break
                if ev["type"] == "done":
                    yield _sse(sh.obj("", ev["finish_reason"], with_usage=with_usage))
                    if with_usage:
                        yield _sse(sh.obj(None, usage_=ev["usage"], with_usage=True))
                    break
                yield _sse(sh.obj(ev["text"], with_usage=with_usage))
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()

    async def tokenize(self, request: Request) -> Response:
        body = await self.read_json(request)
        engine = await self.engine_for(body)
        text = body.get("content", body.get("prompt"))
        if not isinstance(text, str):
            raise bad("'content' (or 'prompt') must be a string", "content")
        special = body.get("add_special", True)
        if not isinstance(special, bool):
            raise bad("'add_special' must be true or false", "add_special")
        ids = await run_in_threadpool(engine.m.tokenize, text, special)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": engine.m.n_ctx})

    async def detokenize(self, request: Request) -> Response:
        body = await self.read_json(request)
        engine = await self.engine_for(body)
        ids = body.get("tokens")
        n = engine.m.config.n_vocab
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n
                                                for t in ids):
            raise bad(f"'tokens' must be a list of token ids in 0..{n - 1}", "tokens")
        text = engine.m.detokenize(ids)
        return JSONResponse({"content": text, "prompt": text})


async def _api_error(request: Request, e: APIError) -> Response:
    return _error_response(e)


async def _http_error(request: Request, e: HTTPException) -> Response:
    msg = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed on "
           f"{request.url.path}"}.get(e.status_code, str(e.detail))
    return _error_response(APIError(e.status_code, msg, code="not_found" if e.status_code == 404 else None))


async def _internal_error(request: Request, e: Exception) -> Response:
    log.exception("internal error on %s", request.url.path)
    return _error_response(APIError(500, "internal server error (see the server log)"))


def create_app(pool: ModelPool, api_key: str | None = None, cors: list[str] | None = None,
               max_body: int = MAX_BODY) -> Starlette:
    s = Server(pool, api_key, max_body)
    routes = [Route("/", s.index), Route("/health", s.health), Route("/v1/models", s.models),
              Route("/v1/models/{name:path}", s.model),
              Route("/v1/chat/completions", s.chat, methods=["POST"]),
              Route("/v1/completions", s.completions, methods=["POST"]),
              Route("/tokenize", s.tokenize, methods=["POST"]), Route("/detokenize", s.detokenize, methods=["POST"])]
    middleware = [Middleware(CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if cors else []
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _internal_error})

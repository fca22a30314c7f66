"""`edgeqwen serve` against real clients: the official `openai` package (answers compared with
`Model.chat` / `Model.generate` on the same input) and `httpx` for malformed and hostile requests.
Each server is a real server process (`python -m edgeqwen.server`, the command `edgeqwen serve` runs) on a
free loopback port."""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import edgeqwen  # noqa: E402
from converters.hf_to_gguf import convert  # noqa: E402
from edgeqwen.chat import EARLY_STOP  # noqa: E402
from edgeqwen.chat_template import builtin_chat_template  # noqa: E402

KEY = "test-key-0123456789"
CTX = 512
EOS = 151645            # <|im_end|>
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
TOOL_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
# As the templates of Qwen3's thinking-only checkpoints: the generation prompt opens the think block,
# so a random-weight model's output is reasoning until the budget closes it.
_OFF = "{%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, models: dict[str, Path], *args: str, key: str | None = KEY):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        cmd = [sys.executable, "-m", "edgeqwen.server", "--port", str(self.port), "-c", str(CTX), "-t", "1",
               "--log-level", "warning", *args]
        for name, path in models.items():
            cmd += ["-m", f"{name}={path}"]
        if key:
            cmd += ["--api-key", key]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"edgeqwen-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def health(self) -> dict:
        r = httpx.get(self.url + "/health", timeout=10)
        assert r.status_code == 200
        return r.json()

    def wait_idle(self) -> dict:
        """/health once no slot is busy and nothing waits (a leaked slot never gets there)."""
        deadline = time.monotonic() + 60
        while True:
            h = self.health()
            if all(m.get("busy", 0) == 0 and m.get("queued", 0) == 0 for m in h["models"].values()):
                return h
            assert time.monotonic() < deadline, f"slots still busy: {h}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def files(gguf_file, checkpoints, tmp_path_factory) -> dict[str, Path]:
    tiny = gguf_file("tiny", "q8_0")
    d = tmp_path_factory.mktemp("thinker") / "ckpt"
    shutil.copytree(checkpoints["tiny"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    template = builtin_chat_template()
    assert _OFF in template
    cfg["chat_template"] = template.replace(_OFF, _OFF + "    {%- else %}\n        {{- '<think>\\n' }}\n")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    thinker = d.parent / "thinker.gguf"
    convert(d, thinker, "q8_0", progress=False)
    return {"tiny": tiny, "thinker": thinker}


@pytest.fixture(scope="module")
def server(files):
    s = ServerProcess(files, "--max-loaded", "2", "--parallel", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def refs(files):
    """The same files loaded in-process: the independent reference for the server's answers."""
    return {name: edgeqwen.load(path, ctx_size=CTX, threads=1) for name, path in files.items()}


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def still_healthy(request):
    """After every test the server answers /health and no slot is left busy."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").wait_idle()


def chat_messages(text="Tell me about the sea.") -> list[dict]:
    return [{"role": "system", "content": "You are brief."}, {"role": "user", "content": text}]


def extra(obj, name):
    """A field the openai types do not declare (reasoning_content), as the client keeps it."""
    return (obj.model_extra or {}).get(name)


OPENAI_ARGS = {"temperature", "top_p", "seed", "max_tokens", "max_completion_tokens", "stop", "presence_penalty",
               "frequency_penalty", "logit_bias", "tools", "stream", "stream_options", "response_format"}
# The tiny random model's distribution is peaked on "\n\n" after the prompt: a repetition penalty gives text.
TEXT = dict(temperature=1.0, repetition_penalty=3.0)


def ask(client, model: str, messages: list, **kw):
    """client.chat.completions.create with the Qwen extras (top_k, enable_thinking, ...) in extra_body."""
    known = {k: v for k, v in kw.items() if k in OPENAI_ARGS}
    extras = {k: v for k, v in kw.items() if k not in OPENAI_ARGS}
    return client.chat.completions.create(model=model, messages=messages, extra_body=extras or None, **known)


# ---------------------------------------------------------------- openai client

def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny", "thinker"]
    assert client.models.retrieve("thinker").id == "thinker"
    h = server.health()
    assert h["status"] == "ok" and h["models"]["tiny"]["slots"] == 4


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(seed=7, top_p=0.9, top_k=50, **TEXT)])
def test_chat_equals_model_chat(client, refs, sampling):
    msgs = chat_messages()
    ref = refs["tiny"].chat(msgs, enable_thinking=False, max_tokens=12, **sampling)
    assert ref.content or sampling["temperature"] == 0
    r = ask(client, "tiny", msgs, max_tokens=12, chat_template_kwargs={"enable_thinking": False}, **sampling)
    m = r.choices[0].message
    assert r.object == "chat.completion" and r.model == "tiny" and m.role == "assistant"
    assert (m.content or "") == ref.content
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == ref.prompt_tokens
    assert r.usage.completion_tokens == ref.completion_tokens
    assert r.usage.total_tokens == ref.prompt_tokens + ref.completion_tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_stream_equals_whole(client, refs):
    msgs = chat_messages("Stream this.")
    kw = dict(max_completion_tokens=16, seed=3, enable_thinking=False, **TEXT)
    whole = ask(client, "tiny", msgs, **kw)
    chunks = list(ask(client, "tiny", msgs, stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ref = refs["tiny"].chat(msgs, enable_thinking=False, max_tokens=16, seed=3, **TEXT)
    assert text == whole.choices[0].message.content == ref.content and text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [ref.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_thinking_on_off(client, refs):
    msgs = chat_messages("Think first.")
    on = ask(client, "thinker", msgs, max_tokens=10, seed=1, **TEXT)
    ref = refs["thinker"].chat(msgs, max_tokens=10, seed=1, **TEXT)
    assert ref.reasoning and extra(on.choices[0].message, "reasoning_content") == ref.reasoning
    assert on.usage.completion_tokens_details.reasoning_tokens == ref.reasoning_tokens > 0
    off = ask(client, "thinker", msgs, max_tokens=10, seed=1, chat_template_kwargs={"enable_thinking": False}, **TEXT)
    ref_off = refs["thinker"].chat(msgs, enable_thinking=False, max_tokens=10, seed=1, **TEXT)
    assert extra(off.choices[0].message, "reasoning_content") is None and not ref_off.reasoning
    assert off.choices[0].message.content == ref_off.content and ref_off.content
    assert off.usage.completion_tokens_details.reasoning_tokens == 0


def test_thinking_budget_streamed(client, refs):
    msgs = chat_messages("A long think.")
    chunks = list(ask(client, "thinker", msgs, max_tokens=24, seed=2, stream=True,
                      stream_options={"include_usage": True}, thinking_budget=5, **TEXT))
    reasoning = "".join(extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ref = refs["thinker"].chat(msgs, max_tokens=24, seed=2, thinking_budget=5, **TEXT)
    assert reasoning == ref.reasoning and content == ref.content
    assert EARLY_STOP.split("</think>")[0].strip() in reasoning
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == ref.reasoning_tokens == 5


def test_tool_call_round_trip(client, refs):
    """The assistant's tool call (a continued message, as the random model will not write one) comes back
    as an OpenAI tool call; <|im_end|> forced through logit_bias makes it finish with "tool_calls"; the
    client's tool result then renders through the template as Model.chat renders it."""
    msgs = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": TOOL_CALL}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, max_tokens=8, temperature=0,
                                       logit_bias={str(EOS): 100})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, max_tokens=8,
                                                 temperature=0, logit_bias={str(EOS): 100}, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == \
        [(0, "get_weather", {"city": "Paris"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # round trip: the assistant message as the client holds it, then the tool's answer
    history = [msgs[0], choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    r2 = ask(client, "tiny", history, tools=TOOLS, max_tokens=10, seed=4, enable_thinking=False, **TEXT)
    assert "content" not in history[1]                   # as the client sends it; the template wants a string
    ref = refs["tiny"].chat([history[0], {**history[1], "content": ""}, history[2]], tools=TOOLS, max_tokens=10, seed=4, enable_thinking=False, **TEXT)
    assert r2.choices[0].message.content == ref.content and ref.content
    assert r2.usage.prompt_tokens == ref.prompt_tokens


def test_completions_and_stop(client, refs):
    ref = refs["tiny"].generate("Once upon a time", 20, temperature=1.0, seed=11)
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=1.0, seed=11)
    assert r.object == "text_completion" and r.choices[0].text == ref.text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == len(ref.token_ids) and r.usage.prompt_tokens == 4
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=20, temperature=1.0, seed=11, stream=True) if c.choices)
    assert streamed == ref.text
    stop = ref.text[len(ref.text) // 2:len(ref.text) // 2 + 3]
    cut = ref.text[:ref.text.find(stop)]
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=1.0, seed=11,
                                  stop=[stop])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"


def test_chat_stop_string(client, refs):
    msgs = chat_messages("Stop somewhere.")
    ref = refs["tiny"].chat(msgs, enable_thinking=False, max_tokens=20, seed=5, **TEXT)
    stop = ref.content[len(ref.content) // 2:len(ref.content) // 2 + 2]
    kw = dict(max_tokens=20, seed=5, stop=stop, enable_thinking=False, **TEXT)
    r = ask(client, "tiny", msgs, **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ref.content[:ref.content.find(stop)].strip()
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(client, "tiny", msgs, stream=True, **kw)
                       if c.choices)
    assert streamed.strip() == r.choices[0].message.content


def test_response_format(client, refs, server):
    """Structured output goes through to the chat engine (edgeqwen/constrain.py): the server's answer is
    Model.chat's with the same response_format; a bad schema is a 400 naming the field."""
    if "response_format" not in inspect.signature(refs["tiny"].chat).parameters:
        pytest.skip("this chat engine has no response_format")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    rf = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    msgs = chat_messages("A number as JSON.")
    kw = dict(max_tokens=40, seed=6, enable_thinking=False, **TEXT)
    ref = refs["tiny"].chat(msgs, response_format=rf, **kw)
    r = ask(client, "tiny", msgs, response_format=rf, **kw)
    assert r.choices[0].message.content == ref.content and r.choices[0].finish_reason == ref.finish_reason
    if ref.finish_reason == "stop":
        assert set(json.loads(ref.content)) == {"n"}
    bad = {**rf, "json_schema": {"name": "t", "schema": 5}}
    body = {"model": "tiny", "messages": msgs, "response_format": bad}
    _error(httpx.post(server.url + "/v1/chat/completions", json=body, headers=server.headers()), 400, "response_format")


def test_prefix_cache_counts(client):
    msgs = chat_messages("Same prompt twice.")
    kw = dict(model="tiny", messages=msgs, max_tokens=2, temperature=0, extra_body={"enable_thinking": False})
    client.chat.completions.create(**kw)
    second = client.chat.completions.create(**kw)
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1


def test_tokenize_detokenize(server, refs):
    h = server.headers()
    r = httpx.post(server.url + "/tokenize", json={"model": "tiny", "content": "Hello world"}, headers=h)
    assert r.status_code == 200 and r.json()["tokens"] == refs["tiny"].tokenize("Hello world")
    r = httpx.post(server.url + "/detokenize", json={"model": "tiny", "tokens": r.json()["tokens"]}, headers=h)
    assert r.json()["content"] == "Hello world"


# ---------------------------------------------------------------- hostile requests

def _error(r, status: int, param: str | None = None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and isinstance(e["message"], str) and e["message"]
    assert "Traceback" not in e["message"]
    if param is not None:
        assert e["param"] == param
    return e


@pytest.mark.parametrize("body, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": 1.5}, "top_k"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": 2**70}, "seed"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": "json"}, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, None),
    ({"messages": [{"role": "user", "content": "hi"}], "model": 3}, "model"),
    ([1, 2, 3], None),
])
def test_bad_fields_400(server, body, param):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=data, headers=server.headers(), timeout=60)
    _error(r, 400, param)


def test_bad_requests(server):
    url, h = server.url, server.headers()
    _error(httpx.post(url + "/v1/chat/completions", content=b"{not json", headers=h), 400)
    _error(httpx.post(url + "/v1/chat/completions", content=b"\xff\xfe{}", headers=h), 400)
    _error(httpx.post(url + "/v1/chat/completions", content=b"[" * 100000 + b"]" * 100000, headers=h), 400)
    _error(httpx.post(url + "/v1/chat/completions", content=b'{"a": ' + b"9" * 100000 + b"}", headers=h), 400)
    _error(httpx.post(url + "/v1/completions", json={"prompt": ""}, headers=h), 400, "prompt")
    _error(httpx.post(url + "/v1/completions", json={"prompt": [10**9]}, headers=h), 400, "prompt")
    _error(httpx.post(url + "/v1/completions", json={"prompt": "x", "echo": True}, headers=h), 400, "echo")
    _error(httpx.post(url + "/v1/completions", json={"prompt": "x " * 600}, headers=h), 400)     # > context
    e = _error(httpx.post(url + "/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]}, headers=h), 404, "model")
    assert e["code"] == "model_not_found"
    _error(httpx.get(url + "/v1/models/nope", headers=h), 404)
    _error(httpx.get(url + "/no/such/route", headers=h), 404)
    _error(httpx.get(url + "/v1/chat/completions", headers=h), 405)
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * (9 * 2**20) + b'"}]}'
    _error(httpx.post(url + "/v1/chat/completions", content=big, headers=h, timeout=60), 413)

    def chunks():                                   # no Content-Length: the limit holds while reading
        yield b'{"messages": "'
        for _ in range(10):
            yield b"a" * 2**20
        yield b'"}'
    _error(httpx.post(url + "/v1/chat/completions", content=chunks(), headers=h, timeout=60), 413)


def test_api_key(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Bearer " + KEY[:-1]},
                    {"Authorization": "Bearer " + KEY + "x"}, {"X-Api-Key": "nope"}):
        e = _error(httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers), 401)
        assert e["code"] == "invalid_api_key"
    _error(httpx.get(server.url + "/v1/models"), 401)
    _error(httpx.post(server.url + "/tokenize", json={"content": "x"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200      # open, as llama.cpp's


def test_50_concurrent_streams(server):
    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str, bool]:
        body = {"model": "tiny", "messages": [{"role": "system", "content": "Shared system prompt."},
                                              {"role": "user", "content": f"request {i}"}],
                "max_tokens": 6, "stream": True, "temperature": 1.0, "seed": i, "repetition_penalty": 3.0}
        text, done = "", False
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    ev = json.loads(line[6:])
                    assert "error" not in ev, ev
                    if ev["choices"]:
                        text += ev["choices"][0]["delta"].get("content") or ""
            return r.status_code, text, done

    async def main():
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=300, limits=limits) as c:
            return await asyncio.gather(*(one(c, i) for i in range(50)))

    results = asyncio.run(main())
    assert [(s, d) for s, _, d in results] == [(200, True)] * 50
    assert len({t for _, t, _ in results}) > 1          # different seeds, different answers


@pytest.fixture(scope="module")
def small_server(files):
    """One slot, a queue of one, and a long context: a request can run long enough to be interrupted."""
    s = ServerProcess({"tiny": files["tiny"]}, "--parallel", "1", "--max-queue", "1", "-c", "32768", key=None)
    yield s
    s.stop()


LONG = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 30000, "stream": True,
        "temperature": 1.0, "min_p": 0, "top_k": 0, "top_p": 1}


def _tiny(s) -> dict:
    return s.health()["models"]["tiny"]


def test_client_closes_mid_stream(small_server):
    s = small_server
    for n in range(1, 4):
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=LONG, timeout=60) as r:
            assert r.status_code == 200
            events = (x for x in r.iter_lines() if x)
            assert [next(events).startswith("data: ") for _ in range(3)] == [True] * 3
            assert _tiny(s)["busy"] == 1
        # closed after a few events, 30000 tokens before the end: the engine drops it, the slot is free
        deadline = time.monotonic() + 60
        while _tiny(s)["dropped"] < n:
            assert time.monotonic() < deadline, _tiny(s)
            time.sleep(0.05)
        assert s.wait_idle()["models"]["tiny"]["dropped"] == n


def test_queue_full_and_sigterm(small_server):
    """One slot and a queue of one: a third request gets 503 with Retry-After. SIGTERM then ends the
    streams in flight with an error event, and the process exits."""
    s = small_server
    with httpx.Client(base_url=s.url, timeout=60) as c1, httpx.Client(base_url=s.url, timeout=60) as c2:
        with c1.stream("POST", "/v1/chat/completions", json=LONG) as r1:
            lines1 = r1.iter_lines()
            assert next(lines1).startswith("data: ")
            with c2.stream("POST", "/v1/chat/completions", json=LONG) as r2:
                assert r2.status_code == 200
                deadline = time.monotonic() + 60
                while _tiny(s)["queued"] != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                r3 = httpx.post(s.url + "/v1/chat/completions", json={**LONG, "stream": False}, timeout=60)
                e = _error(r3, 503)
                assert e["code"] == "server_busy" and int(r3.headers["retry-after"]) >= 1
                s.proc.send_signal(signal.SIGTERM)
                events = [json.loads(x[6:]) for x in lines1 if x.startswith("data: {")]
                assert "shutting down" in events[-1]["error"]["message"]
                events2 = [json.loads(x[6:]) for x in r2.iter_lines() if x.startswith("data: {")]
                assert "shutting down" in events2[-1]["error"]["message"]
    assert s.proc.wait(60) in (0, -signal.SIGTERM)      # uvicorn re-raises the signal once it has shut down


def test_serve_command_errors(tmp_path):
    """`edgeqwen serve` with a bad -m: one error line, exit 1, before anything listens."""
    from click.testing import CliRunner

    from edgeqwen.cli import main
    from edgeqwen.server import is_loopback

    for args, needle in ((["-m", str(tmp_path / "nope.gguf")], "no such file"),
                         (["-m", "a=" + str(tmp_path / "x.gguf")], "no such file")):
        r = CliRunner().invoke(main, ["serve", *args])
        assert r.exit_code == 1 and needle in r.output and r.output.count("\n") == 1, r.output
    (tmp_path / "x.gguf").write_bytes(b"not a gguf")
    r = CliRunner().invoke(main, ["serve", "-m", f"a={tmp_path / 'x.gguf'}", "-m", f"a={tmp_path / 'x.gguf'}"])
    assert r.exit_code == 1 and "duplicate model name" in r.output
    r = CliRunner().invoke(main, ["serve", "-m", f"a={tmp_path / 'x.gguf'}", "--port", "0"])
    assert r.exit_code == 1 and "cannot load the model 'a'" in r.output and "not a GGUF file" in r.output
    assert r.output.count("\n") == 1, r.output
    r = CliRunner().invoke(main, ["serve", "--repeat-penalty", "nan"])
    assert r.exit_code == 2 and "finite" in r.output
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.2", "example.org")] == \
        [True, True, True, False, False, False]

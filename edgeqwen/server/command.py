"""The `edgeqwen serve` command (options only; edgeqwen/cli.py registers it). Importing this module
loads click and nothing heavy: the server's modules load when the command runs."""
from __future__ import annotations

import math
import os

import click

from ..errors import EdgeQwenError
from ..limits import MAX_CTX, MAX_THREADS, MAX_TOKENS


def _model_specs(specs: tuple[str, ...]) -> dict[str, str]:
    """-m FILE, -m REPO:QUANT (pulled) or -m NAME=FILE|REPO:QUANT (repeatable) -> {name: path}; the
    name defaults to the file's stem, or to REPO:QUANT itself."""
    from .. import hub
    from ..demo import demo_model_path

    if not specs:
        path = demo_model_path(log=lambda m: click.echo(m, err=True))
        click.echo("note: no -m given; serving the built-in demo model (see `edgeqwen info`). "
                   "Pass -m FILE.gguf or -m REPO:QUANT for another.", err=True)
        return {"edgeqwen-demo": str(path)}
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec):
            name, path = os.path.splitext(os.path.basename(spec))[0], spec
            if hub.is_ref(spec):
                name = spec
        if hub.is_ref(path):
            path = hub.resolve(path)            # a pulled model (one error line when it is not pulled)
        if not name or name in models:
            raise EdgeQwenError(f"-m {spec}: {'an empty' if not name else 'a duplicate'} model name")
        if not os.path.isfile(path):
            raise EdgeQwenError(f"-m {spec}: no such file {path!r}")
        models[name] = path
    return models


def _finite(value) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number")
    return value


@click.command()
@click.option("-m", "--model", "models", multiple=True,
              help="GGUF file or pulled REPO:QUANT, or NAME=FILE (repeatable; a request's 'model' picks one). "
                   "Default: the demo model.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests decoded together per model (KV-cache slots); the rest wait in a queue.")
@click.option("-c", "--ctx-size", type=click.IntRange(1, MAX_CTX), default=None,
              help="Context per slot. Default: min(model, 4096).")
@click.option("-t", "--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Threads. Default: physical cores.")
@click.option("--api-key", default=None, envvar="EDGEQWEN_API_KEY",
              help="Require 'Authorization: Bearer KEY' on the API (also $EDGEQWEN_API_KEY).")
@click.option("--max-loaded", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Models kept in memory at once (others load on first use).")
@click.option("--max-queue", type=click.IntRange(0, 100000), default=64, show_default=True,
              help="Requests waiting per model before answering 503.")
@click.option("-n", "--max-tokens", type=click.IntRange(1, MAX_TOKENS), default=None,
              help="Server-wide cap on tokens per answer. Default: until the context is full.")
@click.option("--cors", multiple=True, help="Allow browser requests from this origin (repeatable). Default: none.")
@click.option("--repeat-penalty", type=click.FloatRange(0, min_open=True), default=None, callback=lambda c, p, v: _finite(v),
              help="Default repetition penalty of requests (1 = off).")
@click.option("--presence-penalty", type=click.FloatRange(-2, 2), default=None, callback=lambda c, p, v: _finite(v),
              help="Default presence penalty of requests, -2..2.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--cache-type", type=click.Choice(["f32", "f16", "q8_0"]), default="f16", show_default=True,
              help="KV cache type of every slot (f16: 2 bytes a value, q8_0: 1.06, f32: 4).")
def serve(models, host, port, parallel, ctx_size, threads, api_key, max_loaded, max_queue, max_tokens, cors,
          repeat_penalty, presence_penalty, log_level, cache_type):
    """An OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models) with a chat page at /."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise EdgeQwenError(f"the server needs extra packages ({e.name} is missing): pip install 'edgeqwen[server]'")
    from . import serve as run_server

    sampling = {k: v for k, v in (("repetition_penalty", repeat_penalty), ("presence_penalty", presence_penalty))
                if v is not None}
    run_server(_model_specs(models), host, port, api_key=api_key, cors=list(cors) or None, parallel=parallel,
               ctx_size=ctx_size, threads=threads, max_loaded=max_loaded, max_queue=max_queue,
               max_tokens=max_tokens, sampling=sampling, log_level=log_level, cache_type=cache_type)


def main() -> None:
    """`python -m edgeqwen.server`: the same command on its own, with the CLI's one-line errors."""
    import sys

    try:
        serve.main(standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except EdgeQwenError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)

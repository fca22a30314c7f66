"""The `edgeqwen` command line: parses options and calls library functions."""
from __future__ import annotations

import math
import sys
import threading

import click

from .errors import EdgeQwenError
from .limits import MAX_CTX, MAX_PROMPT_BYTES, MAX_SEED, MAX_TEMPLATE_BYTES, MAX_THREADS, MAX_TOKENS, MAX_TOP_K


class FiniteFloat(click.ParamType):
    """A finite float in [low, high] ((low, high] with low_open): NaN and inf are refused, which
    click.FloatRange lets through."""
    name = "float"

    def __init__(self, low: float = -math.inf, high: float = math.inf, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        ok = math.isfinite(v) and (self.low < v if self.low_open else self.low <= v) and v <= self.high
        if not ok:
            lo = "" if self.low == -math.inf else f"{'>' if self.low_open else '>='} {self.low:g}"
            hi = "" if self.high == math.inf else f"<= {self.high:g}"
            self.fail(f"{value!r} is not a finite number{' ' if lo or hi else ''}{' and '.join(x for x in (lo, hi) if x)}",
                      param, ctx)
        return v


TEMPERATURE = FiniteFloat(0.0)
PROBABILITY = FiniteFloat(0.0, 1.0)
TOP_P = FiniteFloat(0.0, 1.0, low_open=True)
PENALTY = FiniteFloat(0.0, low_open=True)
PRESENCE = FiniteFloat(-2.0, 2.0)
TOP_K = click.IntRange(0, MAX_TOP_K)
SEED = click.IntRange(0, MAX_SEED)
THREADS = click.IntRange(1, MAX_THREADS)
CTX = click.IntRange(1, MAX_CTX)
COUNT = click.IntRange(0, MAX_TOKENS)


def _read_text(path: str, what: str, limit: int) -> str:
    """A UTF-8 text file ('-' = stdin), at most `limit` bytes: a clear error for anything else."""
    from .inputs import read_text_file

    return read_text_file(path, what, limit)


class _Group(click.Group):
    """Turns EdgeQwenError (bad input) into one `error:` line and exit status 1."""

    def invoke(self, ctx):
        import signal
        import warnings

        saved = signal.getsignal(signal.SIGTERM), warnings.showwarning      # main() replaces both
        try:
            return super().invoke(ctx)
        except EdgeQwenError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:                       # a command run in-process (CliRunner, an embedding app) leaves them as they were
            warnings.showwarning = saved[1]
            if saved[0] is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, saved[0])


@click.group(cls=_Group)
@click.version_option(package_name="edgeqwen")
def main():
    """edgeqwen: run Qwen3 GGUF models on the CPU."""
    import warnings

    from .api import _CheckedModel

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        click.echo(f"warning: {message}", err=True)          # no source line, no category

    warnings.showwarning = one_line_warning
    _CheckedModel.compile_log = staticmethod(lambda m: click.echo(m, err=True))
    _sigterm_like_ctrl_c()


def _sigterm_like_ctrl_c():
    """SIGTERM (kill, systemd, docker stop) ends a command as Ctrl-C does: batch keeps whole records and says
    how to resume, chat and run stop cleanly (the server installs its own handler when it starts)."""
    import signal
    import threading

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)


@main.command()
@click.argument("hf_dir", type=click.Path(path_type=str))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=str), help="Output .gguf file.")
@click.option("--type", "out_type", default="f16", show_default=True,
              type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"], case_sensitive=False),
              help="Weight type of the matrices (norms stay F32); q4_k_m/q5_k_m/q6_k are llama.cpp's "
                   "per-tensor K-quant mixes.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-v", "--verbose", is_flag=True, help="Print each tensor's type and quantization error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def convert(hf_dir, output, out_type, force, verbose, quiet):
    """Convert a Hugging Face Qwen3 checkpoint directory to GGUF."""
    from converters.hf_to_gguf import convert as do_convert

    s = do_convert(hf_dir, output, out_type.lower(), force=force, verbose=verbose,
                   progress=not quiet and sys.stderr.isatty())
    if not quiet:
        types = ", ".join(f"{n} {k}" for k, n in sorted(s.types.items()))
        click.echo(f"wrote {s.out}: {s.n_tensors} tensors ({types}), "
                   f"{s.out_bytes / 2**20:.1f} MiB in {s.seconds:.1f} s", err=True)


def _model_file(model_path, quiet=False, pull=False) -> str:
    """The file a `-m` value names: a path, a pulled `repo:quant` (fetched first with --pull), or,
    without -m, the built-in default model."""
    from . import hub
    from .demo import demo_model_path

    if model_path is None:
        path = str(demo_model_path(log=lambda m: click.echo(m, err=True)))
        if not quiet:
            click.echo("note: no -m given; using the built-in demo model. Pass -m FILE.gguf or -m REPO:QUANT "
                       "(see `edgeqwen pull`) for another.", err=True)
        return path
    return hub.resolve(model_path, allow_pull=pull, log=lambda m: click.echo(m, err=True))


def _load_model(model_path, threads, ctx_size, quiet=False, pull=False):
    from .api import load

    return load(_model_file(model_path, quiet, pull), threads=threads, ctx_size=ctx_size, **_cache_types())


CACHE_TYPES = click.Choice(["f32", "f16", "q8_0"])
DEFAULT_CACHE_TYPE = "f16"          # as llama.cpp's; the Python API's default too (api.Model)


def _cache_options(f):
    """--cache-type (K and V), -ctk/--cache-type-k, -ctv/--cache-type-v, as llama.cpp's; not passed to the
    command: _load_model and bench read them (_cache_types)."""
    def keep(ctx, param, value):
        ctx.meta[f"edgeqwen.{param.name}"] = value
    for decls, default, text in ((("-ctv", "--cache-type-v"), None, "KV cache type of V. Default: --cache-type."),
                                 (("-ctk", "--cache-type-k"), None, "KV cache type of K. Default: --cache-type."),
                                 (("--cache-type",), DEFAULT_CACHE_TYPE, "KV cache type of K and V (f16: 2 bytes "
                                                                         "a value, q8_0: 1.06, f32: 4).")):
        f = click.option(*decls, type=CACHE_TYPES, default=default, show_default=default is not None,
                         expose_value=False, is_eager=True, callback=keep, help=text)(f)
    return f


def _cache_types() -> dict:
    """The KV cache types the running command was given (api.Model's cache_type, cache_type_k, cache_type_v)."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return {k: meta.get(f"edgeqwen.{k}", DEFAULT_CACHE_TYPE if k == "cache_type" else None)
            for k in ("cache_type", "cache_type_k", "cache_type_v")}


MODEL_HELP = "GGUF file, or REPO:QUANT already pulled (see --pull). Default: the built-in demo model."


def _model_options(f):
    """-m/--model and --pull, the same on every command that runs a model."""
    f = click.option("--pull", "pull", is_flag=True,
                     help="With -m REPO:QUANT: download it first if it is not in the cache.")(f)
    return click.option("-m", "--model", "model_path", type=str, default=None, help=MODEL_HELP)(f)


def _memory_note(model):
    """The KV cache size and the expected resident memory, on stderr, before generation."""
    from .memory import for_model
    from .warmup import compiled_before

    click.echo(for_model(model).note(first_run=not compiled_before(model.file)), err=True)


def _sampling_options(f):
    opts = [
        click.option("--temperature", "--temp", type=TEMPERATURE, default=None,
                     help="0 = greedy. Default: the file's, else 0.8."),
        click.option("--top-k", type=TOP_K, default=None, help="0 = off. Default: the file's, else 40."),
        click.option("--top-p", type=TOP_P, default=None, help="1 = off. Default: the file's, else 0.95."),
        click.option("--min-p", type=PROBABILITY, default=None, help="0 = off. Default: the file's, else 0.05."),
        click.option("--repeat-penalty", type=PENALTY, default=None, help="Repetition penalty (1 = off)."),
        click.option("--presence-penalty", type=PRESENCE, default=None, help="Presence penalty, 0..2."),
        click.option("--seed", type=SEED, default=None, help="Random seed (same seed, same output)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _format_options(f):
    """--json-schema FILE | --json | --regex RE | --grammar FILE (structured output, edgeqwen/constrain.py)."""
    opts = [
        click.option("--json-schema", "json_schema", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                     help="Constrain the output (the answer, after any thinking) to JSON valid for this schema file."),
        click.option("--json", "json_mode", is_flag=True, help="Constrain the output to a JSON object."),
        click.option("--regex", default=None, help="Constrain the output to match this regular expression."),
        click.option("--grammar", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                     help="Constrain the output to a Lark grammar file (llguidance's Lark syntax)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _response_format(json_schema, json_mode, regex, grammar) -> dict | None:
    """The response_format of the --json-schema/--json/--regex/--grammar options (files read and checked)."""
    import os

    from .constrain import format_from_options
    from .inputs import read_json_file

    schema = read_json_file(json_schema, "JSON schema", MAX_TEMPLATE_BYTES) if json_schema else None
    if json_schema and not isinstance(schema, (dict, bool)):
        raise EdgeQwenError(f"{json_schema}: a JSON schema must be an object, got {type(schema).__name__}")
    lark = _read_text(grammar, "grammar", MAX_TEMPLATE_BYTES) if grammar else None
    if regex is not None:
        from .errors import check_text
        check_text(regex, "--regex")
    name = os.path.splitext(os.path.basename(json_schema))[0] if json_schema else None
    return format_from_options(schema, json_mode, regex, lark, name=name)


DEFAULT_PROMPT = "Once upon a time"


def _stdin_piped() -> bool:
    """stdin is a pipe, a file or a socket (not a terminal, not /dev/null): `run` reads its prompt there."""
    import os
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):          # no real file (e.g. click's test runner)
        return sys.stdin is not None and not sys.stdin.isatty()
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _sampling(model, temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty, seed):
    from .sampling import SamplingParams

    base = model.default_sampling().__dict__
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
             "repetition_penalty": repeat_penalty, "presence_penalty": presence_penalty, "seed": seed}
    p = SamplingParams(**{**base, **{k: v for k, v in given.items() if v is not None}})
    p.validate()
    return p


@main.command()
@_model_options
@click.option("-p", "--prompt", default=None, help="Prompt text (raw completion, no chat template).")
@click.option("--prompt-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Read the prompt from a file (UTF-8, '-' = stdin).")
@click.option("-n", "--max-tokens", "max_tokens", type=COUNT, default=128, show_default=True, help="Tokens to generate.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("-t", "--threads", type=THREADS, default=None, help="Threads. Default: physical cores.")
@click.option("-c", "--ctx-size", type=CTX, default=None, help="Context size (KV cache). Default: min(model, 4096).")
@click.option("--context-shift", is_flag=True, help="When the context is full, drop the oldest half after the "
              "first --keep tokens and go on (llama.cpp's context shift). Default: stop (finish: length).")
@click.option("--keep", type=click.IntRange(0), default=None, help="With --context-shift: tokens kept at the start. Default: 0.")
@_sampling_options
@_format_options
@_cache_options
def run(model_path, pull, prompt, prompt_file, max_tokens, stop, threads, ctx_size, context_shift, keep, json_schema,
        json_mode, regex, grammar, **sampling):
    """Generate text from a prompt, streaming it to stdout (timings go to stderr)."""
    from .errors import check_text

    if prompt is not None and prompt_file is not None:
        raise EdgeQwenError("give either -p/--prompt or --prompt-file, not both")
    if prompt_file is not None:
        prompt = _read_text(prompt_file, "prompt file", MAX_PROMPT_BYTES)
    if prompt is None and _stdin_piped():
        prompt = _read_text("-", "the prompt on stdin", MAX_PROMPT_BYTES) or None   # `echo text | edgeqwen run`
    default_prompt = prompt is None
    if prompt is None:
        prompt = DEFAULT_PROMPT
    check_text(prompt, "the prompt (-p)")
    for s in stop:
        check_text(s, "a --stop string")
    response_format = _response_format(json_schema, json_mode, regex, grammar)
    if keep is not None and not context_shift:
        raise EdgeQwenError("--keep applies to --context-shift; add --context-shift")
    m = _load_model(model_path, threads, ctx_size, pull=pull)
    if default_prompt:
        click.echo(f"note: no -p and nothing piped on stdin: the prompt is {DEFAULT_PROMPT!r}", err=True)
    params = _sampling(m, **sampling)
    last = None
    chunks = m.stream(prompt, max_tokens, sampling=params, stop=stop,    # checks the arguments
                      response_format=response_format, context_shift=context_shift, keep=keep or 0)
    _memory_note(m)
    for ch in chunks:
        sys.stdout.write(ch.text)
        sys.stdout.flush()
        last = ch
    sys.stdout.write("\n")
    t = last.timings
    if last.message:
        click.echo(f"note: {last.message}", err=True)
    click.echo(f"load {m.load_seconds:.2f} s | prompt {t.prompt_tokens} tok, {t.prompt_tok_s:.1f} tok/s | "
               f"generated {t.generated_tokens} tok, {t.decode_tok_s:.1f} tok/s | finish: {last.finish_reason} "
               f"| threads {m.threads}", err=True)


@main.command()
@click.argument("model_arg", metavar="[MODEL]", required=False, default=None)
@_model_options
@click.option("-c", "--ctx-size", type=CTX, default=None,
              help="Context size for the memory estimate. Default: as `run`, min(model, 4096).")
@_cache_options
def info(model_arg, model_path, pull, ctx_size):
    """Describe a GGUF file: architecture, sizes, context, tensor types, CPU, expected memory."""
    import os

    from .api import DEFAULT_CTX
    from . import simd
    from .cpu import cpu_info
    from .errors import one_line
    from .gguf_model import ModelFile
    from .memory import estimate
    from .moe import describe as moe_rows

    if model_arg is not None and model_path is not None:
        raise EdgeQwenError("give the model once: as MODEL or with -m, not both")
    model_path = _model_file(model_arg if model_arg is not None else model_path, pull=pull)
    mf = ModelFile(model_path)
    c = mf.config
    size = os.path.getsize(model_path)
    n_params = sum(int(__import__("numpy").prod(t.shape)) for t in mf.gguf.tensors.values())
    from . import constants as C
    rows = [
        ("file", f"{model_path} ({size / 2**20:.1f} MiB)"),
        ("name", one_line(mf.metadata.get(C.KEY_NAME, "?"), 200)),     # file text: no terminal escapes
        ("architecture", mf.metadata.get(C.KEY_ARCH)),
        ("parameters", f"{n_params / 1e9:.3f} B"),
        ("layers", c.n_layer), ("hidden", c.n_embd), ("ffn", c.n_ff),
        *(moe_rows(mf) if c.n_expert else ()),
        ("heads (q / kv)", f"{c.n_head} / {c.n_head_kv}, head_dim {c.head_dim}"),
        ("vocab", c.n_vocab),
        ("context (trained)", c.n_ctx_train),
        ("rope", f"base {c.rope_base:g}" + (f", yarn x{c.rope_scaling['factor']:g}" if c.rope_scaling else "")),
        ("embeddings", "tied" if mf.tied else "untied (output.weight)"),
        ("tensor types", ", ".join(f"{k} {v}" for k, v in sorted(mf.type_counts().items()))),
        ("chat template", "yes" if mf.metadata.get(C.KEY_CHAT_TEMPLATE) else "no"),
    ]
    n_ctx = min(c.n_ctx_train, DEFAULT_CTX) if ctx_size is None else ctx_size
    if n_ctx < 1:
        raise EdgeQwenError(f"--ctx-size must be >= 1, got {n_ctx}")
    types = _cache_types()
    est = estimate(c, size, n_ctx, type_k=types["cache_type_k"] or types["cache_type"],
                   type_v=types["cache_type_v"] or types["cache_type"])
    rows += [("KV cache", est.kv_text()), ("memory (expected)", est.text()), ("cpu", cpu_info().summary()),
             ("kernels", simd.describe())]
    for k, v in rows:
        click.echo(f"{k:18s} {v}")


@main.command()
@_model_options
@click.option("-p", "--n-prompt", "n_prompt", type=int, default=512, show_default=True,
              help="Prompt-processing test: tokens per forward (0 = skip).")
@click.option("-n", "--n-gen", "n_gen", type=int, default=128, show_default=True,
              help="Decode test: single-token forwards (0 = skip).")
@click.option("-t", "--threads", type=int, default=None, help="Threads. Default: physical cores.")
@click.option("-r", "--repetitions", "reps", type=int, default=5, show_default=True, help="Repetitions of each test.")
@click.option("-b", "--batch-size", type=click.IntRange(1, 2**16), default=None,
              help="Tokens per forward batch. Default: the library's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random token ids.")
@click.option("--bandwidth/--no-bandwidth", "bandwidth", default=True, show_default=True,
              help="Measure the memory-read bandwidth (< 2 s) for the decode roofline.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-d", "--depth", type=click.IntRange(0, MAX_CTX), default=0, show_default=True,
              help="Tokens already in the KV cache when pp and tg are measured (llama-bench's -d).")
@_cache_options
def bench(model_path, pull, n_prompt, n_gen, threads, reps, batch_size, seed, bandwidth, as_json, depth):
    """Measure load, warm-up (compile), prompt (pp) and decode (tg) speed and peak memory, like llama-bench;
    and the decode roofline: weight bytes read per token x tg tok/s, as a % of the measured memory bandwidth."""
    import json

    from .bench import format_table, run_bench

    log = (lambda msg: click.echo(msg, err=True)) if sys.stderr.isatty() else None
    model_path = _model_file(model_path, pull=pull)
    res = run_bench(model_path, n_prompt=n_prompt, n_gen=n_gen, threads=threads, reps=reps,
                    batch_size=batch_size, seed=seed, log=log, bandwidth_probe=bandwidth, depth=depth,
                    **_cache_types())
    click.echo(json.dumps(res, indent=2) if as_json else format_table(res))


@main.command()
@_model_options
@click.option("--messages", "messages_file", type=click.Path(dir_okay=False), default=None,
              help="Non-interactive: a JSON list of messages (or {\"messages\", \"tools\"}); "
                   "prints the assistant message as JSON.")
@click.option("--tools", "tools_file", type=click.Path(dir_okay=False), default=None,
              help="JSON list of tools (OpenAI-style function schemas) for the template.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--think/--no-think", "think", default=True, show_default=True,
              help="Thinking mode (enable_thinking). /think and /no_think in a message switch it too.")
@click.option("--hide-thinking", is_flag=True, help="Do not print the reasoning.")
@click.option("--thinking-budget", type=COUNT, default=None, help="Close the thinking after N tokens, then answer.")
@click.option("-n", "--max-tokens", "max_tokens", type=COUNT, default=None,
              help="Tokens per answer, reasoning included. Default: until the context is full.")
@click.option("--chat-template-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="A Jinja chat template to use instead of the file's.")
@click.option("--show-prompt", is_flag=True, help="With --messages: print the rendered prompt to stderr.")
@click.option("-t", "--threads", type=THREADS, default=None, help="Threads. Default: physical cores.")
@click.option("-c", "--ctx-size", type=CTX, default=None, help="Context size (KV cache). Default: min(model, 4096).")
@click.option("--temperature", "--temp", type=TEMPERATURE, default=None, help="0 = greedy. Default: by mode (0.6 / 0.7).")
@click.option("--top-k", type=TOP_K, default=None, help="0 = off. Default: 20.")
@click.option("--top-p", type=TOP_P, default=None, help="1 = off. Default: by mode (0.95 / 0.8).")
@click.option("--min-p", type=PROBABILITY, default=None, help="0 = off. Default: 0.")
@click.option("--repeat-penalty", type=PENALTY, default=None, help="Repetition penalty (1 = off).")
@click.option("--presence-penalty", type=PRESENCE, default=None, help="Presence penalty, 0..2 (against repetition).")
@click.option("--seed", type=SEED, default=None, help="Random seed (same seed, same output).")
@click.option("--context-shift", is_flag=True, help="When the context is full, drop the oldest half after the "
              "first --keep tokens and go on (llama.cpp's context shift). Default: the answer stops.")
@click.option("--keep", type=click.IntRange(0), default=None,
              help="With --context-shift: tokens kept at the start. Default: the system prompt's.")
@_format_options
@_cache_options
def chat(model_path, pull, messages_file, tools_file, system, think, hide_thinking, thinking_budget, max_tokens,
         chat_template_file, show_prompt, threads, ctx_size, temperature, top_k, top_p, min_p, repeat_penalty,
         presence_penalty, seed, context_shift, keep, json_schema, json_mode, regex, grammar):
    """Chat with the chat template: an interactive REPL, or one answer as JSON with --messages.

    Sampling defaults follow the mode (Qwen3 model card): thinking T 0.6, top_p 0.95, top_k 20, min_p 0;
    non-thinking T 0.7, top_p 0.8, top_k 20, min_p 0. The options override both."""
    from . import chat_repl
    from .chat import ChatSession

    tools = chat_repl.read_tools(tools_file) if tools_file else None
    template = _read_text(chat_template_file, "chat template", MAX_TEMPLATE_BYTES) if chat_template_file else None
    response_format = _response_format(json_schema, json_mode, regex, grammar)
    if keep is not None and not context_shift:
        raise EdgeQwenError("--keep applies to --context-shift; add --context-shift")
    if context_shift and messages_file:
        raise EdgeQwenError("--context-shift is for the interactive chat, not --messages")
    m = _load_model(model_path, threads, ctx_size, pull=pull)
    opts = dict(enable_thinking=think, thinking_budget=thinking_budget, max_tokens=max_tokens,
                temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                repetition_penalty=repeat_penalty, presence_penalty=presence_penalty, seed=seed)
    if response_format is not None:
        opts["response_format"] = response_format
    if messages_file:
        chat_repl.run_json(m, messages_file, system=system, tools=tools, chat_template=template,
                           show_prompt=show_prompt, **opts)
    else:
        _memory_note(m)
        chat_repl.repl(ChatSession(m, system=system, tools=tools, chat_template=template, context_shift=context_shift,
                                   keep=keep, **opts), hide_thinking)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, allow_dash=True, path_type=str))
@_model_options
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              help="Output JSONL: one record per item. Items already in it are skipped (resume). '-' = stdout.")
@click.option("--progress-every", "progress_every", type=FiniteFloat(0.1, 3600.0), default=10.0, show_default=True,
              help="Without a terminal: seconds between progress lines on stderr.")
@click.option("-P", "--parallel", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Sequences decoded together (continuous batching).")
@click.option("--ordered", is_flag=True, help="Write records in input order (default: as they complete).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "text"]), default=None,
              help="INPUT file format. Default: jsonl for .jsonl/.ndjson, else text (one prompt per line).")
@click.option("--template", default=None, help='Wrap each text item, e.g. "Summarize:\\n{text}".')
@click.option("--glob", "glob", default=None, help="Files of a directory INPUT to take. Default: **/* (all).")
@click.option("--raw", is_flag=True, help="Text items are raw completion prompts, not chat user messages.")
@click.option("--system", default=None, help="System prompt for text items (chat).")
@click.option("--think/--no-think", "think", default=True, show_default=True,
              help="Thinking mode for chat items (an item's enable_thinking overrides it).")
@click.option("--thinking-budget", type=COUNT, default=None, help="Close the thinking after N tokens, then answer.")
@click.option("-n", "--max-tokens", "max_tokens", type=COUNT, default=512, show_default=True,
              help="Tokens per item, reasoning included (an item's max_tokens overrides it).")
@click.option("--overwrite", is_flag=True, help="Start over: empty OUT first instead of resuming.")
@click.option("--retry-errors", is_flag=True, help="On resume, run again the items whose record is an error.")
@click.option("--no-prefix-cache", is_flag=True, help="Prefill every prompt in full (no shared-prefix reuse).")
@click.option("--prompt-cache", "prompt_cache", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Keep shared prompt prefixes' KV caches in this directory and reuse them in later runs.")
@click.option("-t", "--threads", type=THREADS, default=None, help="Threads. Default: physical cores.")
@click.option("-c", "--ctx-size", type=CTX, default=None,
              help="Context per sequence (KV cache). Default: min(model, 4096).")
@click.option("--temperature", "--temp", type=TEMPERATURE, default=None,
              help="0 = greedy. Default: chat by mode (0.6 / 0.7), raw prompts the file's.")
@click.option("--top-k", type=TOP_K, default=None, help="0 = off.")
@click.option("--top-p", type=TOP_P, default=None, help="1 = off.")
@click.option("--min-p", type=PROBABILITY, default=None, help="0 = off.")
@click.option("--repeat-penalty", type=PENALTY, default=None, help="Repetition penalty (1 = off).")
@click.option("--presence-penalty", type=PRESENCE, default=None, help="Presence penalty, 0..2.")
@click.option("--seed", type=SEED, default=None,
              help="Base seed: each item samples with a seed from (seed, id), whatever --parallel or resuming.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary (errors still go to stderr).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on a Ray cluster (pip install \"edgeqwen[ray]\"): its head's HOST:PORT, ray://HOST:PORT, "
                   "auto; alone: $RAY_ADDRESS, else a new local cluster. The model path must exist on every node.")
@click.option("--replicas", type=click.IntRange(1, 4096), default=None,
              help="With --ray: model replicas (Ray actors), each running --parallel sequences. Default: 1.")
@click.option("--cpus-per-replica", type=click.IntRange(1, 1024), default=None,
              help="With --ray: CPUs per replica, its threads unless -t. Default: 1.")
@_format_options
@_cache_options
def batch(input_path, model_path, pull, output, progress_every, parallel, ordered, fmt, template, glob, raw, system, think,
          thinking_budget, max_tokens, overwrite, retry_errors, no_prefix_cache, prompt_cache, threads, ctx_size, temperature,
          top_k, top_p, min_p, repeat_penalty, presence_penalty, seed, quiet, json_schema, json_mode, regex, grammar,
          ray_address, replicas, cpus_per_replica):
    """Run every item of INPUT through the model into OUT.jsonl, resumably.

    INPUT is a JSONL file (objects with `id`, `prompt` or `messages`, and optional max_tokens,
    temperature, top_k, top_p, min_p, enable_thinking, thinking_budget, stop, seed, tools), a text
    file (one prompt per line; id = line number) or a directory of text files (id = relative path).
    Each output line has id, content, reasoning (chat), finish_reason, token counts and timings, or
    an `error`. Re-running the same command skips what OUT already has; Ctrl-C or a kill loses at
    most the items in flight."""
    import os
    import threading
    import time

    from .batch import read_items, run_batch
    from .errors import one_line, quote
    from .kv_cache import KVCache

    for name, v in (("--max-tokens", max_tokens), ("--thinking-budget", thinking_budget)):
        if v is not None and v < 0:
            raise EdgeQwenError(f"{name} must be >= 0, got {v}")
    if parallel < 1:
        raise EdgeQwenError(f"--parallel must be >= 1, got {parallel}")
    if output != "-" and os.path.abspath(output) == os.path.abspath(input_path):
        raise EdgeQwenError("the output must not be the input file")
    response_format = _response_format(json_schema, json_mode, regex, grammar)
    items = read_items(input_path, template=template, glob=glob, chat=not raw, system=system, fmt=fmt)
    if not items:
        raise EdgeQwenError(f"{input_path} has no items")
    if prompt_cache is not None and (ray_address is not None or no_prefix_cache):
        raise EdgeQwenError("--prompt-cache works without --ray and --no-prefix-cache")
    if ray_address is None:
        if replicas is not None or cpus_per_replica is not None:
            raise EdgeQwenError("--replicas and --cpus-per-replica need --ray")
        m = _load_model(model_path, threads, ctx_size, quiet=quiet, pull=pull)
    else:        # on a Ray cluster (integrations/ray.py): m describes the model, its replicas load it
        from .integrations.ray import RayBatch

        m = RayBatch(_model_file(model_path, quiet, pull), address=ray_address or None, replicas=replicas,
                     cpus_per_replica=cpus_per_replica, threads=threads, ctx_size=ctx_size)
        run_batch = RayBatch.run                  # the same arguments and output as batch.run_batch
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    kv = KVCache.nbytes_for(m.config, m.n_ctx, m.model.type_k, m.model.type_v) if ray_address is None else \
        KVCache.nbytes_for(m.config, m.n_ctx)
    say(f"{len(items)} items from {input_path} | parallel {parallel} | context {m.n_ctx} per sequence "
        f"(KV cache up to {parallel * kv / 2**20:.0f} MiB when full) | threads {m.threads}")
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                "repetition_penalty": repeat_penalty, "presence_penalty": presence_penalty}
    bar = None
    tty = sys.stderr.isatty()
    ticking = threading.Event()
    t0 = time.monotonic()

    def tick(s):
        """Without a terminal: a progress line every --progress-every seconds, items finishing or not."""
        while not ticking.wait(progress_every):
            dt = time.monotonic() - t0
            say(f"{s.done}/{s.total - s.skipped} items, {s.errors} errors, {dt:.0f} s, {s.done / dt:.2f} items/s, "
                f"{s.tok_s:.1f} tok/s generated")

    def on_start(s):
        nonlocal bar
        if s.repaired_bytes:
            say(f"note: {output} ended with a torn line ({s.repaired_bytes} bytes, from an interrupted run): removed")
        if s.skipped:
            say(f"resuming: {s.skipped} of {s.total} items are already in {output}")
        if not quiet and tty:
            from tqdm import tqdm
            bar = tqdm(total=s.total - s.skipped, unit="item", file=sys.stderr, dynamic_ncols=True)
        elif not quiet:
            threading.Thread(target=tick, args=(s,), daemon=True).start()

    def on_record(rec, s):
        if "error" in rec:
            click.echo(f"item {quote(rec['id'], 80)}: error: {one_line(rec['error'], 500)}", err=True)
        if bar is not None:
            bar.set_postfix_str(f"{s.tok_s:.1f} tok/s, {s.errors} errors", refresh=False)
            bar.update(1)

    s = run_batch(m, items, output, parallel=parallel, seed=seed, ordered=ordered, overwrite=overwrite,
                  retry_errors=retry_errors, prefix_cache=not no_prefix_cache, on_record=on_record,
                  on_start=on_start, max_tokens=max_tokens, enable_thinking=think,
                  thinking_budget=thinking_budget, sampling=sampling, response_format=response_format,
                  **({"prompt_cache": prompt_cache} if prompt_cache is not None else {}))
    ticking.set()
    if bar is not None:
        bar.close()
    left = s.total - s.skipped - s.done
    if s.skipped == s.total:
        say(f"nothing to do: all {s.total} items are already in {output} (--overwrite to start over)")
        return
    if s.interrupted:
        click.echo(f"interrupted: {s.done} items written to {output}, {left} left; run the same command again "
                   f"to resume", err=True)
        sys.exit(130)
    say(f"done: {s.done} items ({s.errors} errors) in {s.seconds:.1f} s | {s.generated_tokens} tokens generated, "
        f"{s.tok_s:.1f} tok/s | {s.reused_tokens} prompt tokens reused from the prefix cache"
        + (f" | {s.skipped} skipped (already in {output})" if s.skipped else ""))


@main.command()
@click.argument("ref", metavar="REPO[:QUANT]")
def pull(ref):
    """Download a GGUF model from the Hugging Face Hub into its cache, e.g. Qwen/Qwen3-4B-GGUF:Q4_K_M.

    Resumes an interrupted download, checks the file's size and sha256 against the Hub, and prints its
    path; afterwards `-m REPO:QUANT` uses it (also offline). HF_TOKEN, HF_HOME, HF_ENDPOINT and
    HF_HUB_OFFLINE apply as for every Hugging Face tool. Without :QUANT the repository must hold one model."""
    from . import hub

    path = hub.pull(ref, log=lambda m: click.echo(m, err=True))
    click.echo(str(path))


@main.command(name="list")
def list_models():
    """Models pulled into the Hugging Face cache: repository, quant, size, path."""
    from . import hub
    from .memory import fmt_bytes

    rows = [(e.repo, e.quant, fmt_bytes(e.size), str(e.path)) for e in hub.list_models()]
    if not rows:
        click.echo("no models pulled yet: `edgeqwen pull REPO:QUANT`, e.g. Qwen/Qwen3-0.6B-GGUF:Q8_0", err=True)
        return
    head = ("REPO", "QUANT", "SIZE", "PATH")
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for r in [head, *rows]:
        click.echo(f"{r[0]:{w[0]}}  {r[1]:{w[1]}}  {r[2]:>{w[2]}}  {r[3]}")


@main.command()
@click.argument("ref", metavar="REPO[:QUANT]")
def rm(ref):
    """Delete a pulled model from the cache (REPO:QUANT its files, REPO the whole repository)."""
    from . import hub

    for p in hub.remove(ref):
        click.echo(f"removed {p}", err=True)


@main.command()
@_model_options
@click.option("--all-types", is_flag=True, help="Compile the kernels of every weight type edgeqwen runs.")
@click.option("-t", "--threads", type=THREADS, default=None, help="Threads. Default: physical cores.")
def warmup(model_path, pull, all_types, threads):
    """Compile the kernels ahead of time (numba caches them on disk): those of one model's weight types,
    or of all types, e.g. right after installing on a Raspberry Pi."""
    from .warmup import warm_up_all, warm_up_file

    say = lambda m: click.echo(m, err=True)
    if all_types:
        if model_path is not None:
            raise EdgeQwenError("give -m or --all-types, not both")
        warm_up_all(threads, log=say)
    else:
        warm_up_file(_model_file(model_path, pull=pull), threads, log=say)


@main.command()
@_model_options
@click.argument("input_path", metavar="TEXT|JSONL", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--kl-base", "kl_base", type=click.Path(dir_okay=False), default=None,
              help="Base GGUF (e.g. the F16 file): also the KL divergence from it and top-1 agreement.")
@click.option("-c", "--ctx-size", type=click.IntRange(2, MAX_CTX), default=512, show_default=True,
              help="Window: each document is scored in windows of this many tokens.")
@click.option("-t", "--threads", type=THREADS, default=None, help="Threads. Default: physical cores.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def perplexity(model_path, pull, input_path, kl_base, ctx_size, threads, as_json):
    """Perplexity on a text file or JSONL ({"text"} or {"messages"} per line); with --kl-base, the KL
    divergence of each next-token distribution from the base model's (what a quantization costs)."""
    import json

    from .perplexity import run as run_perplexity

    result = run_perplexity(_model_file(model_path, quiet=True, pull=pull), input_path, base_path=kl_base,
                            ctx=ctx_size, threads=threads)
    click.echo(json.dumps(result.as_dict()) if as_json else "\n".join(result.lines()))


from .server.command import serve  # noqa: E402  (options only: the server's modules load when it runs)

main.add_command(serve)

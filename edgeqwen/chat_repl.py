"""The terminal side of `edgeqwen chat`: the interactive REPL and the JSON mode. Printing and
commands only; conversations, modes, parsing and the KV cache are in `chat.py`."""
from __future__ import annotations

import contextlib
import json
import sys
import warnings

import click

from .chat import ChatEngine, ChatSession, load_conversation
from .chat_output import openai_message
from .errors import EdgeQwenError
from .inputs import check_tools, read_json_file
from .limits import MAX_PROMPT_BYTES
from .memory import for_model
from .warmup import compiled_before

HELP = """commands:
  /think, /no_think   thinking on / off for the next turns (inside a message they are Qwen's soft switches)
  /system TEXT        set the system prompt (/system alone removes it)
  /reset              forget the conversation (keeps the system prompt)
  /save FILE          write the conversation as JSON (and its KV cache to FILE.kv); /load FILE reads them
  /help, /exit        this help; quit (also Ctrl-D). Ctrl-C stops an answer and keeps the conversation.
input: Up/Down recall earlier messages; pasted text with several lines is one message; a message
  between two lines of three quotes (\"\"\") can span lines; a line starting with // sends the rest
  starting with one /."""
COMMANDS = ("/think", "/no_think", "/system", "/reset", "/save", "/load", "/help", "/exit", "/quit")
BLOCK = '"""'


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def _stats(r) -> str:
    t = r.timings
    return (f"[{'think' if r.thinking else 'no_think'} | prompt {r.prompt_tokens} tok ({r.cached_tokens} cached, {t.prompt_tokens} new, "
            f"{t.prompt_tok_s:.1f} tok/s) | answer {r.completion_tokens} tok ({r.reasoning_tokens} reasoning), "
            f"{t.decode_tok_s:.1f} tok/s | finish: {r.finish_reason}]")


def _print_tool_calls(r) -> None:
    for c in r.tool_calls:
        click.echo(f"[tool call] {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})")
    for e in r.tool_call_errors:
        click.echo(f"[malformed tool call] {e['error']}: {e['raw']!r}")


def answer(session: ChatSession, text: str, hide_thinking: bool = False) -> None:
    """Run one turn, streaming reasoning (dimmed, or hidden) and the answer to stdout."""
    session.last_result = None
    state = None                                   # "reasoning" | "content": what is being printed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.closing(session.stream(text)) as deltas:
                for d in deltas:
                    if d.reasoning and state is None:
                        click.echo(_dim("[thinking hidden]" if hide_thinking else "[thinking]\n"), nl=hide_thinking)
                        state = "reasoning"
                    if d.reasoning and not hide_thinking:
                        click.echo(_dim(d.reasoning), nl=False)
                    if d.content:
                        if state == "reasoning" and not hide_thinking:
                            click.echo(_dim("\n[/thinking]"))
                        state = "content"
                        click.echo(d.content, nl=False)
            if state == "reasoning" and not hide_thinking:
                click.echo(_dim("\n[/thinking]"), nl=False)
        except KeyboardInterrupt:
            click.echo("\n(interrupted)", nl=False)
        except EdgeQwenError as e:
            click.echo(f"error: {e}", err=True)
            return
        finally:
            for w in caught:
                click.echo(f"warning: {w.message}", err=True)
    click.echo("")
    r = session.last_result
    if r is None:
        return
    _print_tool_calls(r)
    if r.message:
        click.echo(f"note: {r.message}", err=True)
    click.echo(_dim(_stats(r)), err=True)


class _Reader:
    """Reads one message at a time: with line editing and history (prompt_toolkit) on a terminal, where
    a paste of several lines stays one message; from plain lines otherwise (piped input, shown)."""

    def __init__(self):
        self.interactive = sys.stdin.isatty() and sys.stdout.isatty()
        self.prompt_session = None
        if self.interactive:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory, InMemoryHistory

            from .demo import cache_dir

            try:
                cache_dir().mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(cache_dir() / "chat_history"))
            except OSError:
                history = InMemoryHistory()
            self.prompt_session = PromptSession(history=history)

    def line(self, prompt: str) -> str:
        if self.prompt_session is not None:
            return self.prompt_session.prompt(prompt)      # EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C
        line = input(prompt)
        click.echo(line)                                    # piped input: show what was sent
        return line

    def message(self, prompt: str) -> str:
        """One message: a line (or a pasted block), or the lines between two \"\"\" lines."""
        text = self.line(prompt)
        if not text.strip().startswith(BLOCK):
            return text
        first = text.strip()[len(BLOCK):]
        if first.endswith(BLOCK):                         # """one line"""
            return first[:-len(BLOCK)]
        lines = [first] if first else []
        while True:
            more = self.line("... ")
            if more.rstrip().endswith(BLOCK):
                lines.append(more.rstrip()[:-len(BLOCK)])
                return "\n".join(lines).strip("\n")
            lines.append(more)


def repl(session: ChatSession, hide_thinking: bool = False) -> None:
    reader = _Reader()
    click.echo("edgeqwen chat: type a message; /help for commands.", err=True)
    soft = None                                  # a soft switch the next message carries (see /think)
    while True:
        thinking = session.thinking if soft is None else soft == "/think"
        mode = "think" if thinking else "no_think"
        try:
            line = reader.message(f"[{mode}] >>> ")
        except EOFError:
            click.echo("")
            break
        except KeyboardInterrupt:
            click.echo("(Ctrl-D or /exit to quit)")
            continue
        s = line.strip()
        cmd, _, arg = s.partition(" ")
        arg = arg.strip()
        is_command = "\n" not in s and cmd.startswith("/") and not cmd.startswith("//") and \
            (cmd not in ("/think", "/no_think") or not arg)            # "/no_think text": a soft switch
        try:
            if not s:
                continue
            if is_command and cmd not in COMMANDS:
                click.echo(f"unknown command {cmd} (not sent to the model); /help lists the commands", err=True)
            elif s in ("/exit", "/quit"):
                break
            elif s == "/help":
                click.echo(HELP)
            elif s == "/reset":
                session.reset()
                soft = None
                click.echo("(conversation cleared)")
            elif s in ("/think", "/no_think"):
                session.enable_thinking = s == "/think"
                # a soft /no_think in an earlier message would still win: the next message says /think
                soft = "/think" if s == "/think" and not session.thinking else None
                click.echo(f"(thinking {'on' if s == '/think' else 'off'})")
            elif cmd == "/system":
                session.set_system(arg or None)
                click.echo("(system prompt set)" if arg else "(system prompt removed)")
            elif cmd in ("/save", "/load"):
                if not arg:
                    click.echo(f"{cmd} needs a file name: {cmd} FILE", err=True)
                elif cmd == "/save":
                    cached = session.save(arg)
                    kv = f" and the KV cache of {cached} tokens to {arg}.kv" if cached else ""
                    click.echo(f"(saved {len(session.messages)} messages to {arg}{kv})")
                else:
                    cached = session.load(arg)
                    soft = None
                    kv = f", KV cache of {cached} tokens (no prefill)" if cached else ""
                    click.echo(f"(loaded {len(session.messages)} messages from {arg}{kv})")
            elif is_command:
                click.echo(f"{cmd} takes no argument; /help lists the commands", err=True)
            else:
                text = s[1:] if s.startswith("//") else line
                if soft is not None:
                    text, soft = f"{text} {soft}", None
                answer(session, text, hide_thinking)
        except (EdgeQwenError, OSError) as e:
            click.echo(f"error: {e}", err=True)


def run_json(model, messages_file, *, system=None, tools=None, chat_template=None, show_prompt=False, **options):
    """Non-interactive: answer the conversation in `messages_file`; print the assistant message as JSON."""
    messages, file_tools = load_conversation(messages_file)
    if system and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    turn = ChatEngine(model, chat_template).start(messages, tools=tools if tools is not None else file_tools,
                                                  **options)
    if show_prompt:
        click.echo(turn.prompt, err=True)
    click.echo(for_model(model).note(first_run=not compiled_before(model.file)), err=True)   # before generating
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in turn:
            pass
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(json.dumps(openai_message(turn.result), ensure_ascii=False, indent=2))


def read_tools(path) -> list:
    """A JSON list of tool schemas (checked as every other input: edgeqwen/inputs.py)."""
    tools = read_json_file(path, "tools", MAX_PROMPT_BYTES)
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise EdgeQwenError(f"{path}: expected a JSON list of tool schemas")
    return check_tools(tools, f"{path}: tools")

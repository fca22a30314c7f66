"""`edgeqwen chat` driven through a pseudo-terminal (pexpect), as a person types: Up recalls the last
message, a \"\"\" block and a bracketed paste of several lines are one message each, Ctrl-C at the prompt
and during an answer keeps the session, an unknown /command is refused (not sent), /help, and the
mode in the prompt after /think. What was sent is read back from the conversation `/save` writes
(json), not from the screen."""
from __future__ import annotations

import json
import signal
import os
import sys

import pytest

pexpect = pytest.importorskip("pexpect") if os.environ.get("CI") != "true" else __import__("pexpect")

PROMPT = r"\[(no_)?think\] >>>"


@pytest.fixture
def chat(gguf_file, tmp_path):
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "EDGEQWEN_CACHE": str(tmp_path),
           "COLUMNS": "200", "LINES": "50"}
    model = gguf_file("tiny", "q8_0")

    def start(*args):
        # SIGINT back to its default in the child, as in a terminal: a launcher without job control
        # (a backgrounded CI run) starts its jobs with SIGINT ignored, Python then keeps it ignored,
        # and Ctrl-C (^C on the pty) would never reach the answer being generated
        p = pexpect.spawn(sys.executable, ["-m", "edgeqwen", "chat", "-m", str(model), "-t", "1", *args],
                          env=env, encoding="utf-8", timeout=600, dimensions=(50, 200),   # a cold numba cache compiles first
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        p.expect("/help for commands")
        return p

    procs = []
    yield lambda *a: procs.append(start(*a)) or procs[-1]
    for p in procs:
        p.terminate(force=True)


def saved(p, path) -> list[dict]:
    p.sendline(f"/save {path}")
    p.expect(r"\(saved \d+ messages")
    p.expect(PROMPT)
    return json.loads(path.read_text())


def user_texts(conv) -> list[str]:
    msgs = conv["messages"] if isinstance(conv, dict) else conv
    return [m["content"] for m in msgs if m["role"] == "user"]


def test_history_multiline_paste_unknown_command(chat, tmp_path):
    p = chat("--no-think", "-n", "2", "--temperature", "0")
    p.expect(r"\[no_think\] >>>")
    p.sendline("hello there")
    p.expect(r"finish: ")
    p.expect(PROMPT)
    p.send("\x1b[A")                                    # Up: the last message comes back
    p.expect("hello there")
    p.send("\r")
    p.expect(r"finish: ")
    p.expect(PROMPT)
    p.sendline('"""')                                   # a block over three lines
    p.expect(r"\.\.\.")
    p.sendline("line one")
    p.expect(r"\.\.\.")
    p.sendline('line two"""')
    p.expect(r"finish: ")
    p.expect(PROMPT)
    p.send("\x1b[200~first\nsecond\nthird\x1b[201~")   # a terminal's bracketed paste of three lines
    p.send("\r")
    p.expect(r"finish: ")
    p.expect(PROMPT)
    p.sendline("/frobnicate now")
    p.expect(r"unknown command /frobnicate \(not sent to the model\)")
    p.expect(PROMPT)
    p.sendline("/help")
    p.expect("commands:")
    p.expect(PROMPT)
    conv = saved(p, tmp_path / "conv.json")
    assert user_texts(conv) == ["hello there", "hello there", "line one\nline two", "first\nsecond\nthird"]


def test_ctrl_c_and_mode_after_think(chat, tmp_path):
    p = chat("-n", "2", "--temperature", "0")
    p.expect(r"\[think\] >>>")
    p.sendline("quiet please /no_think")                # a soft switch: the next answers do not think
    p.expect(r"finish: ")
    p.expect(r"\[no_think\] >>>")
    p.sendline("/think")                                # the command wins over the earlier soft switch
    p.expect(r"\(thinking on\)")
    p.expect(r"\[think\] >>>")
    p.send("half a mess")
    p.sendintr()                                        # Ctrl-C at the prompt: the line is dropped
    p.expect(r"Ctrl-D or /exit to quit")
    p.expect(r"\[think\] >>>")
    p.sendline("and now?")
    p.expect(r"\[think \| prompt")                      # the answer's stats line: it thought
    p.expect(r"\[think\] >>>")
    conv = saved(p, tmp_path / "c.json")
    assert user_texts(conv) == ["quiet please /no_think", "and now? /think"]
    p.sendline("/no_think")
    p.expect(r"\[no_think\] >>>")
    p.sendcontrol("d")
    p.expect(pexpect.EOF)


def test_ctrl_c_stops_an_answer(chat, tmp_path):
    """Ctrl-C during an answer stops it ("(interrupted)") and the session goes on. The random model
    may end an answer by itself before the signal lands (a sampled end token; a fast machine): then
    the turn is complete and the next one is interrupted instead (at most 5 turns)."""
    import time

    p = chat("--no-think", "-n", "100000", "--temperature", "1", "--seed", "1", "-c", "65536")
    p.expect(r"\[no_think\] >>>")
    for turn in range(1, 6):
        p.sendline("tell me a long story")
        p.expect(r"long story[^\n]*\n", timeout=600)     # the echoed line: the answer follows
        time.sleep(0.5)
        p.sendintr()
        if p.expect([r"\(interrupted\)", r"finish: "], timeout=600) == 0:
            break
        p.expect(r"\[no_think\] >>>")                   # the answer ended before the signal
    else:
        pytest.fail("no answer was interrupted in 5 turns")
    p.expect(r"\[no_think\] >>>")
    conv = saved(p, tmp_path / "i.json")                # the session goes on with its conversation
    assert user_texts(conv) == ["tell me a long story"] * turn

"""Run `edgeqwen` commands on many files in one process and classify how each one ends.

    python tests/fuzz_driver.py child MANIFEST.json START MEMORY_CAP_BYTES   # the worker
    python tests/fuzz_driver.py report [OUT_DIR]     # write the GGUF corpus, run it, print the counts

MANIFEST is a JSON list of {"name", "commands": [[arg, ...], ...]}. For every entry from START on,
each command runs through the click group in this process (`main(args, standalone_mode=False)`),
with stdout/stderr captured, and one JSON line is printed per command:
{"i", "cmd", "class", "detail"}, preceded by {"i", "cmd", "start": true} so that the parent knows
which command was running if this process hangs or dies on a signal. Nothing is caught except to
classify it:

  ok            the command returned (exit status 0)
  clean         exit status 1 after one `error: ...` line (EdgeQwenError through the CLI)
  usage         a click usage error (bad option value), reported by click in one line
  multiline     an `error:` message spanning several lines
  control       an `error:` message containing control characters
  long          an `error:` message longer than MAX_ERROR chars
  exit-N        another exit status
  exc:TYPE      any other exception escaping the CLI (a traceback for a user)

and, seen from the parent (`run_corpus`), which restarts a worker after the failing entry:

  hang          no answer within the timeout (the worker is killed)
  signal:N      the worker died on signal N (segfault, abort, ...)
  died:N        the worker exited with status N mid-command (e.g. the Rust tokenizer aborting)
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

MAX_ERROR = 1000


def classify_error(err: str) -> tuple[str, str]:
    """The class of a command's stderr that ended with exit status 1."""
    lines = err.split("\n")
    first = next((k for k, line in enumerate(lines) if line.startswith("error: ")), None)
    if first is None:
        return "exit-1", err[-300:]
    msg = "\n".join(lines[first:]).rstrip("\n")      # the error line and whatever follows it
    if "\n" in msg:
        return "multiline", msg[:300]
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in msg):
        return "control", repr(msg[:300])
    if len(msg) > MAX_ERROR:
        return "long", msg[:300]
    return "clean", msg


def run_one(main, args: list[str]) -> tuple[str, str]:
    import click

    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main.main(args=args, prog_name="edgeqwen", standalone_mode=False)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    except click.UsageError as e:           # BadParameter, NoSuchOption, ...
        msg = e.format_message()
        if "\n" in msg.strip():
            return "multiline", msg[:300]
        return "usage", msg
    except click.ClickException as e:
        return "usage", e.format_message()
    except BaseException as e:              # noqa: BLE001 -- classified, not handled
        if isinstance(e, KeyboardInterrupt):
            raise
        return f"exc:{type(e).__name__}", f"{str(e)[:300]}"
    if code == 0:
        return "ok", ""
    if code == 1:
        return classify_error(err.getvalue())
    return f"exit-{code}", err.getvalue()[-300:]


def main_loop(manifest: str, start: int, cap: int) -> None:
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from edgeqwen.cli import main

    entries = json.load(open(manifest))
    for i in range(start, len(entries)):
        for c, args in enumerate(entries[i]["commands"]):
            print(json.dumps({"i": i, "cmd": c, "start": True}), flush=True)
            cls, detail = run_one(main, args)
            print(json.dumps({"i": i, "cmd": c, "class": cls, "detail": detail}), flush=True)
    print(json.dumps({"i": len(entries), "cmd": 0, "start": True}), flush=True)    # done: nothing runs


OK_CLASSES = ("ok", "clean", "usage")
MEMORY_CAP = 6 * 2**30       # address space of a worker: numba's threads reserve ~1-2 GiB of it


def run_corpus(entries: list[dict], workdir: Path, timeout: float = 120.0, cap: int = MEMORY_CAP,
               log=None) -> dict:
    """Run every entry's commands in worker processes; (entry index, command index) -> (class,
    detail). A worker that hangs or dies is replaced, starting after the entry it was running.
    `log(i, cmd, class, detail)` is called for every result as it comes."""
    def put(key, value):
        results[key] = value
        if log:
            log(*key, *value)

    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "manifest.json"
    manifest.write_text(json.dumps(entries))
    results: dict[tuple[int, int], tuple[str, str]] = {}
    start = 0
    # the workers run in workdir: import edgeqwen from this checkout, not whatever `pip install -e` points at
    root = os.environ.get("EDGEQWEN_FUZZ_ROOT", str(Path(__file__).resolve().parents[1]))
    env = {**os.environ, "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    while start < len(entries):
        errlog = open(workdir / "worker.stderr", "w+b")
        proc = subprocess.Popen([sys.executable, __file__, "child", str(manifest), str(start), str(cap)],
                                stdout=subprocess.PIPE, stderr=errlog, start_new_session=True, env=env,
                                cwd=workdir)
        fd = proc.stdout.fileno()
        # (entry, command) running now; before the first start line, the worker's first command
        current, pending, next_start = (start, 0), b"", len(entries)
        while True:
            if b"\n" not in pending:      # raw reads: a buffered reader would hide lines from select
                ready, _, _ = select.select([fd], [], [], timeout)
                if not ready:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    put(current, ("hang", f"no answer in {timeout:.0f} s"))
                    next_start = current[0] + 1
                    break
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    pending += chunk
                    continue
                rc = proc.wait()
                errlog.seek(0)
                tail = errlog.read()[-400:].decode("utf-8", "replace")
                if current is None:
                    raise RuntimeError(f"fuzz worker died between commands (status {rc}): {tail}")
                if current[0] < len(entries):        # else the worker's end-of-manifest line
                    put(current, (f"signal:{-rc}" if rc < 0 else f"died:{rc}", tail))
                    next_start = current[0] + 1
                break
            line, pending = pending.split(b"\n", 1)
            rec = json.loads(line)
            if rec.get("start"):
                current = (rec["i"], rec["cmd"])
            else:
                put((rec["i"], rec["cmd"]), (rec["class"], rec["detail"]))
                current = None
        proc.stdout.close()
        errlog.close()
        start = next_start
    return results


def counts(entries: list[dict], results: dict) -> dict[str, collections.Counter]:
    """command name -> Counter of classes (a command never reached after a crash is 'skipped')."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for i, e in enumerate(entries):
        for c, args in enumerate(e["commands"]):
            out[args[0]][results.get((i, c), ("skipped", ""))[0]] += 1
    return out


def gguf_entries(out_dir: Path) -> list[dict]:
    """The GGUF corpus of tests/fuzz_gguf.py written to out_dir, as manifest entries."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fuzz_gguf import write_corpus

    messages = out_dir / "messages.json"
    files = write_corpus(out_dir)
    messages.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    return [{"name": name, "commands": [[a.format(path=str(path), messages=str(messages)) for a in cmd]
                                        for cmd in commands]}
            for name, path, commands in files]


def report(out_dir: Path) -> None:
    entries = gguf_entries(out_dir)
    t0 = time.monotonic()

    def log(i, c, cls, detail):
        if cls not in OK_CLASSES:
            print(f"[{time.monotonic() - t0:5.0f} s] {cls} {entries[i]['commands'][c][0]} {entries[i]['name'][:60]!r}",
                  file=sys.stderr, flush=True)
    results = run_corpus(entries, out_dir / "work", log=log)
    print(f"{len(entries)} files, {sum(len(e['commands']) for e in entries)} commands, "
          f"{time.monotonic() - t0:.0f} s")
    for cmd, cnt in sorted(counts(entries, results).items()):
        print(f"  {cmd:5s} " + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
    for (i, c), (cls, detail) in sorted(results.items()):
        if cls not in OK_CLASSES:
            print(f"{cls:22s} {entries[i]['commands'][c][0]:5s} {entries[i]['name'][:60]!r}: {detail[:160]!r}")


if __name__ == "__main__":
    if sys.argv[1] == "child":
        main_loop(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        import tempfile
        report(Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="edgeqwen-fuzz-")))

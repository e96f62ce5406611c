"""Run the console examples of the docs and compare what they print.

Every ```console block of README.md and docs/*.md is a piece of a shell
session: `$ CMD` lines are typed into one bash per page (so variables, the
spool and background workers carry from block to block, as a reader following
the page would have them), and the lines after a command are what it prints,
stdout and stderr together. A page runs in a fresh temporary HOME, so the
default spool is `/home/you/.local/share/queuectl/spool` once masked.

What varies from run to run is masked on both sides before comparing: times,
durations, generated ids, pids, the host name, the temporary HOME. An
expected line `...` matches any number of lines. Supervisor lines, which carry
a timestamp when stdout is not a terminal, are compared without it (the docs
show a terminal).

An HTML comment right before a block, invisible on the rendered page, may say:

    <!-- doc-test: skip WHY -->            the block is not run (WHY is required)
    <!-- doc-test: setup                    shell lines run first, unseen;
    printf '...' > job.json                 each must exit 0
    -->

Why not a library: sybil has no parser for shell sessions (one would be
written here anyway) and prysk (cram) reads its own indented .t files, not
markdown fences; neither is packaged where this project installs from.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_HOME = "/home/you"
COMMAND_TIMEOUT = 90.0

DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(\w[\w-]*)(.*?)-->", re.S)

MASKS = [
    # `list`: a time alone today, with its date otherwise (so also across midnight).
    (re.compile(r"\bat (\d{4}-\d\d-\d\d )?\d\d:\d\d\b"), "at <when>"),
    # Generated ids: time-sortable, 20261128T052228718037-6c5e00.
    (re.compile(r"\b\d{8}T\d{12}-[0-9a-f]{6}\b"), "<id>"),
    # ISO 8601 times, with or without fractions and offset; `list`'s local times.
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?( [+-]\d{4})?"), "<time>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "<date>"),
    # pids and process groups, and who ran a job on which host.
    (re.compile(r"\b(PID=|pid=|pid |process group |supervisor_pid=)\d+"), r"\1<pid>"),
    (re.compile(r"\((\S+) pid <pid>\)"), "(<host> pid <pid>)"),
    (re.compile(r"\b(host|node)=\S+"), r"\1=<host>"),
    (re.compile(r"@[^\s:]+:<pid>|@[^\s:]+:\d+"), "@<node>:<pid>"),
    # Durations and ages: 0.002s, 2.1s, 10m, 1d4h, 9m59s.
    (re.compile(r"(?<![\w.-])\d+(\.\d+)?(ms|[dhms])(\d+[hms])*\b"), "<dur>"),
]
STAMP = re.compile(r"^<time> (?=\[)", re.M)


def mask(text: str, home: str) -> str:
    text = text.replace(home, DOC_HOME)
    for rx, repl in MASKS:
        text = rx.sub(repl, text)
    return STAMP.sub("", text)


@dataclass
class Command:
    line: str       # what follows "$ "
    expected: str   # the lines printed after it in the doc


@dataclass
class Block:
    path: Path
    lineno: int
    commands: list[Command]
    setup: str = ""
    skip: str | None = None

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.lineno}"


def parse(path: Path) -> list[Block]:
    """The console blocks of a markdown file, with the directives before them."""
    text = path.read_text()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!--"):
            j = i
            while "-->" not in lines[j]:
                j += 1
            m = DIRECTIVE.search("\n".join(lines[i:j + 1]))
            if m:
                pending[m.group(1)] = m.group(2).strip("\n ")
            i = j + 1
            continue
        if line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            if lang == "console":
                blocks.append(_block(path, i + 1, lines[i + 1:j], pending))
            pending = {}
            i = j + 1
            continue
        if line.strip():
            pending = {}  # a directive belongs to the block right after it
        i += 1
    return blocks


def _block(path: Path, lineno: int, body: list[str], directives: dict[str, str]) -> Block:
    commands: list[Command] = []
    for line in body:
        if line.startswith("$ "):
            commands.append(Command(line[2:], ""))
        elif commands:
            commands[-1].expected += line + "\n"
        else:
            raise ValueError(f"{path}:{lineno}: console block output before any `$ ` command")
    if "skip" in directives and not directives["skip"]:
        raise ValueError(f"{path}:{lineno}: doc-test: skip needs a reason")
    return Block(path, lineno, commands, directives.get("setup", ""), directives.get("skip"))


def matches(expected: str, actual: str) -> bool:
    """Line by line, `...` standing for any lines (none included)."""
    parts = []
    for line in expected.rstrip("\n").split("\n") if expected.strip() else []:
        parts.append(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + r"\n")
    return re.fullmatch("".join(parts), actual if actual.endswith("\n") or not actual else actual + "\n") is not None


@dataclass
class Session:
    """One bash, its HOME and work directory, for one page."""

    tmp: Path
    proc: subprocess.Popen = field(init=False)
    mark: str = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.tmp / "home"
        self.work = self.home / "work"
        self.work.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QUEUECTL_", "XDG_", "NOTIFY_SOCKET", "JOURNAL_STREAM", "PYTEST"))}
        bindir = str(Path(sys.executable).parent)
        env.update(HOME=str(self.home), TZ="UTC", LC_ALL="C.UTF-8", COLUMNS="80",
                   PATH=bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
                   SPOOL=str(self.home / ".local/share/queuectl/spool"))
        self.mark = f"__doccheck_{os.getpid()}_{time.monotonic_ns()}__"
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=self.work, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.buf = b""

    def run(self, line: str, timeout: float = COMMAND_TIMEOUT) -> tuple[str, int]:
        """Type one command; (what it printed, its exit status)."""
        script = (f"{{ {line}\n}} </dev/null 2>&1; __rc=$?; printf '\\n{self.mark} %d\\n' $__rc; "
                  "(exit $__rc)\n")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        end = re.compile(rb"\n" + self.mark.encode() + rb" (\d+)\n")
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not (m := end.search(self.buf)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"`{line}` still running after {timeout:.0f}s; printed {self.buf[-2000:]!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"bash exited during `{line}`")
                self.buf += chunk
        out, self.buf = self.buf[:m.start()], self.buf[m.end():]
        return out.decode("utf-8", "replace"), int(m.group(1))

    def close(self) -> None:
        try:
            self.run("queuectl worker stop --timeout 5 >/dev/null 2>&1; true", timeout=30)
        except (TimeoutError, RuntimeError):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_page(path: Path, tmp: Path) -> list[str]:
    """Run every console block of a page in order; the mismatches, described."""
    failures: list[str] = []
    session = Session(tmp)
    home = str(session.home)
    try:
        for block in parse(path):
            if block.skip is not None:
                continue
            for line in filter(None, (s.strip() for s in block.setup.split("\n"))):
                out, rc = session.run(line)
                if rc:
                    failures.append(f"{block.where}: setup `{line}` exited {rc}:\n{out}")
            for cmd in block.commands:
                try:
                    out, _rc = session.run(cmd.line)
                except TimeoutError as e:
                    failures.append(f"{block.where}: {e}")
                    return failures
                want, got = mask(cmd.expected, home), mask(out, home)
                if not matches(want, got):
                    failures.append(f"{block.where}: $ {cmd.line}\n--- the doc says\n{want}--- it printed\n{got}")
    finally:
        session.close()
    return failures


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

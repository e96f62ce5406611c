"""The docs are tests: every console example runs, every JSON field is real.

tests/doccheck.py runs each page's ```console blocks in a fresh HOME and
compares what they print (times, ids and pids masked). docs/json.md's tables
are checked against real output both ways: a field it names that the output
lacks fails, and so does a field the output has that it does not name. A
broken link between the pages fails too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import doccheck

ROOT = doccheck.ROOT
JSON_MD = ROOT / "docs" / "json.md"
PAGES = doccheck.pages()
EXAMPLE_PAGES = [p for p in PAGES if doccheck.parse(p)]


# -- console examples -------------------------------------------------------------


def test_the_pages_with_examples_are_found():
    """If the parser saw nothing, every example test below would pass on anything."""
    names = {p.name for p in EXAMPLE_PAGES}
    assert {"README.md", "controls.md", "queues.md", "dropins.md", "observe.md"} <= names
    assert sum(len(b.commands) for p in EXAMPLE_PAGES for b in doccheck.parse(p)) > 60


@pytest.mark.slow
@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: p.name)
def test_console_examples_print_what_the_page_says(page, tmp_path):
    failures = doccheck.run_page(page, tmp_path / "session")
    assert not failures, "\n\n".join(failures)


def test_the_comparison_masks_only_what_varies():
    home = "/tmp/x/home"
    got = doccheck.mask("[worker-0] started PID=4242 on /tmp/x/home/.local/share/queuectl/spool\n"
                        "enqueued job 20261128T052228718037-6c5e00\n", home)
    assert got == ("[worker-0] started PID=<pid> on /home/you/.local/share/queuectl/spool\n"
                   "enqueued job <id>\n")
    assert doccheck.matches("a\n...\nd\n", "a\nb\nc\nd\n")
    assert doccheck.matches("a\n...\nd\n", "a\nd\n")
    assert not doccheck.matches("a\nd\n", "a\nb\nd\n")
    assert not doccheck.matches("exit 1\n", "exit 2\n")
    assert not doccheck.matches("", "something\n")


def test_a_wrong_example_fails(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```console\n$ echo hi\nhi\n$ queuectl enqueue --id x 'true'\nenqueued job y\n```\n")
    failures = doccheck.run_page(page, tmp_path / "session")
    assert len(failures) == 1 and "enqueued job y" in failures[0], failures


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().split("\n"):
        if line.startswith("#") and not line.startswith("#!"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_the_pages_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    assert not bad, f"{page.name}: broken links {bad}"


# -- docs/json.md against real output -----------------------------------------------


def doc_tables() -> dict[tuple[str, int], tuple[set[str], set[str]]]:
    """(section heading, n-th table in it) -> (every field named, the optional ones).

    A field is a backquoted name in a table's first column; a row whose
    description starts with "only" is optional (present only when set).
    """
    tables: dict[tuple[str, int], tuple[set[str], set[str]]] = {}
    section, n, in_table = "", 0, False
    for line in JSON_MD.read_text().split("\n"):
        if line.startswith("#"):
            section, n, in_table = line.lstrip("#").strip(), 0, False
        elif line.startswith("| field |") or line.startswith("| metric |"):
            tables[(section, n)] = (set(), set())
            in_table = True
            n += 1
        elif in_table and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) <= set("-"):
                continue
            names = set(re.findall(r"`([^`]+)`", cells[0]))
            tables[(section, n - 1)][0].update(names)
            if cells[-1].startswith("only"):
                tables[(section, n - 1)][1].update(names)
        else:
            in_table = False
    return tables


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[tuple[str, int], set[str]]:
    """The keys of every output json.md describes, from one small spool."""
    from support import cli
    spool = tmp_path_factory.mktemp("json") / "spool"

    def qc(*args, check=True):
        return cli(spool, *args, check=check).stdout

    qc("config", "set", "queue.gpu.concurrency", "1")
    qc("config", "set", "backoff_max", "0.05")
    qc("enqueue", "--id", "rich", "--env", "A=1", "--label", "l", "--queue", "gpu", "--on-finish", "true",
       "echo rich")
    qc("enqueue", "--id", "doomed", "--max-retries", "0", "echo oops >&2; exit 3")
    qc("worker", "start", "--burst", check=False)
    qc("enqueue", "--id", "child", "--after", "rich", "--after-any", "doomed", "--hold", "true")
    (spool / "junk").write_text("x")             # an unexpected file, for check's problems
    (spool / "rejected" / "bad.json").write_text("{")
    (spool / "rejected" / "bad.json.reason").write_text("not JSON\n")
    qc("pause", "--queue", "gpu")

    records = json.loads(qc("list", "--json"))
    lines = [json.loads(line) for line in qc("list", "--json-lines").splitlines()]
    shown = json.loads(qc("show", "--json", "rich"))
    job_keys = set().union(*(json.loads(qc("show", "--json", i))["job"].keys() for i in ("rich", "child")),
                           *(r.keys() for r in json.loads(qc("dlq", "list", "--json"))))
    status = json.loads(qc("status", "--json"))
    problems = json.loads(qc("check", "--json", check=False))
    out: dict[tuple[str, int], set[str]] = {
        ("The job record", 0): set(job_keys),
        ("`list --json`, `list --json-lines`", 0): set().union(*(r.keys() for r in records + lines)) - job_keys,
        ("The job record", 1): set().union(*(h.keys() for r in records for h in r["history"] if "attempt" in h)),
        ("`status --json`", 0): set(status),
        ("`status --json`", 1): set().union(*(q.keys() for q in status["queues"].values())),
        ("`status --queue NAME --json`", 0): set(json.loads(qc("status", "--queue", "gpu", "--json"))),
        ("`show --json ID`", 0): set(shown),
        ("`reindex --json`", 0): set(json.loads(qc("reindex", "--json"))),
        ("`check --json`", 0): set(problems),
        ("`check --json`", 1): set().union(*(p.keys() for p in problems["problems"])),
        ("`config list --json`, `config get --json KEY`", 0):
            {re.sub(r"^queue\.[^.]+\.", "queue.NAME.", k) for k in json.loads(qc("config", "list", "--json"))},
    }
    metrics = qc("metrics")
    # A counter's samples carry _total, the name people query; its TYPE line may not.
    out[("`metrics`", 0)] = {m + ("_total" if kind == "counter" and not m.endswith("_total") else "")
                             for m, kind in re.findall(r"^# TYPE (\S+) (\w+)", metrics, re.M)}

    from support import wait_for
    qc("worker", "start", "--detach")
    try:
        workers = wait_for(lambda: len(w := json.loads(qc("worker", "list", "--json"))) >= 2 and w, timeout=60)
        out[("`worker list --json`", 0)] = set().union(*(w.keys() for w in workers))
        from queuectl.web import create_app
        client = create_app(str(spool)).test_client()
        overview = wait_for(lambda: (o := client.get("/api/overview").get_json())["workers"] and o, timeout=60)
    finally:
        qc("worker", "stop", "--timeout", "10")
    qc("resume")
    out[("`GET /api/overview`", 0)] = set(overview)
    out[("`GET /api/overview`", 1)] = set().union(*(w.keys() for w in overview["workers"]))
    out[("`GET /api/overview`", 2)] = set().union(*(q.keys() for q in overview["queues"]))
    jobs = client.get("/api/jobs/completed").get_json()
    out[("`GET /api/jobs/STATE?page=N&q=TEXT&queue=Q&label=L`, `GET /api/dlq?...`", 0)] = set(jobs)
    out[("`GET /api/jobs/STATE?page=N&q=TEXT&queue=Q&label=L`, `GET /api/dlq?...`", 1)] = \
        set().union(*(j.keys() for j in jobs["jobs"]))
    one = client.get("/api/job/rich").get_json()
    out[("`GET /api/job/ID`", 0)] = set(one)
    out[("`GET /api/job/ID/log?offset=N`", 0)] = set(client.get("/api/job/rich/log").get_json())
    rejected = client.get("/api/rejected").get_json()
    out[("`GET /api/rejected?page=N`", 0)] = set(rejected)
    out[("`GET /api/rejected?page=N`", 1)] = set().union(*(f.keys() for f in rejected["files"]))
    out["content-type"] = {client.get("/metrics").headers["Content-Type"]}
    return out


# Optional fields the spool above cannot show: `counted` is written only when a
# graceful stop interrupts an attempt (tests/test_worker.py covers it).
NOT_SHOWN = {("The job record", 1): {"counted"}}


def test_every_table_of_json_md_is_checked(real):
    assert set(doc_tables()) == {k for k in real if k != "content-type"}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(doc_tables()), ids=lambda k: f"{k[0]}#{k[1]}")
def test_json_md_names_exactly_the_fields_of_the_real_output(real, key):
    named, optional = doc_tables()[key]
    have = real[key]
    undocumented = have - named
    missing = named - have - NOT_SHOWN.get(key, set())
    assert not undocumented, f"{key}: docs/json.md does not name {sorted(undocumented)}"
    assert not missing, f"{key}: docs/json.md names {sorted(missing)}, which the output does not have"


def test_the_metrics_content_type_is_the_one_served(real):
    (served,) = real["content-type"]
    assert f"`{served}`" in JSON_MD.read_text().replace("\n", " ") or served in JSON_MD.read_text()


# -- the README's commands table against --help ----------------------------------------


def _commands() -> dict[str, set[str]]:
    """'worker start' -> its long options, for every command of the CLI."""
    import click

    from queuectl.cli import main
    out: dict[str, set[str]] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            path = f"{prefix}{name}"
            if isinstance(cmd, click.Group):
                walk(cmd, path + " ")
            else:
                out[path] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)
                             if o.startswith("--") and o != "--help"}
    walk(main, "")
    return out


def _table_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    body = text[text.index("| command | what it does |"):]
    rows = []
    for line in body.split("\n")[2:]:
        if not line.startswith("|"):
            break
        first, rest = line[1:].split(" | ", 1)
        rows.append((first, rest))
    return rows


def test_the_readme_commands_table_matches_the_cli():
    commands = _commands()
    documented: dict[str, set[str]] = {}
    for first, rest in _table_rows():
        for synopsis in re.findall(r"`([^`]+)`", first):
            words = synopsis.replace("\\|", "|").split()
            names = [" ".join(words[:n]) for n in range(len(words), 0, -1)]
            if words[0] == "config":  # `config list | get KEY | set KEY VALUE`
                for part in " ".join(words[1:]).split(" | "):
                    documented.setdefault(f"config {part.split()[0]}", set()).update(
                        re.findall(r"--[a-z][a-z-]*", part))
                continue
            cmd = next((n for n in names if n in commands), None)
            assert cmd is not None, f"README commands table: no command {synopsis!r}"
            opts = set(re.findall(r"--[a-z][a-z-]*", first + rest))
            documented.setdefault(cmd, set()).update(o for o in opts if o in commands[cmd] or
                                                     not any(o in v for v in commands.values()))
    missing = sorted(set(commands) - set(documented))
    assert not missing, f"README commands table lacks {missing}"
    wrong = [f"`{cmd}` has no {sorted(opts - commands[cmd])}" for cmd, opts in documented.items()
             if opts - commands[cmd]]
    wrong += [f"`{cmd}` does not show {sorted(commands[cmd] - opts)}" for cmd, opts in documented.items()
              if commands[cmd] - opts]
    assert not wrong, "README commands table: " + "; ".join(wrong)

"""Every bad input a new user tried (issue 13, part 5) is one line on stderr, exit 2, and
nothing written — never a traceback, an idle hang or a store changed by a command that
only reads."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charter import __version__
from charter.adapters.files import MAX_ALIAS_VALUES, MAX_FILE_BYTES, load_workflow_file
from charter.adapters.sqlite import SqliteStore
from charter.adapters.sqlite_connection import open_connection
from charter.bootstrap import open_store
from charter.cli import EXIT_USAGE, EXIT_WAITING, main
from charter.cli.common import require_node, require_run
from charter.core.errors import IncompatibleStore, InvalidInput, NotFound, StoreError
from charter.core.records import DEFAULT_TENANT, MAX_ID_LENGTH, Tenant
from charter.core.scheduler import item_id

SIMPLE = """\
workflow_id: simple
version: "1"
start_node: a
tools:
  t: {idempotent: true, executor: echo}
nodes:
  a:
    kind: {type: tool, tool_ref: t, args: {}}
"""

HOLD = """\
workflow_id: hold
version: "1"
start_node: a
tools:
  t: {idempotent: true, executor: echo}
policy: {require_approval_for: ["t"]}
nodes:
  a:
    kind: {type: tool, tool_ref: t, args: {}}
"""


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run ``charter argv`` in-process; it must fail with exit 2 and one line naming each
    of ``needles``, and print nothing on stdout."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("charter: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    assert "Traceback" not in err
    assert "internal error" not in err
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "simple.yaml").write_text(SIMPLE)
    (tmp_path / "hold.yaml").write_text(HOLD)
    return tmp_path


# ── worker options: refused before anything starts ──


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lease", "0"], "--lease: expected more than 0"),
        (["--lease", "nan"], "--lease: expected more than 0"),
        (["--lease", "-1"], "--lease: expected more than 0"),
        (["--lease", "inf"], "--lease: expected more than 0"),
        (["--lease", "86401"], "at most 86400 seconds"),
        (["--concurrency", "0"], "--concurrency: expected at least 1"),
        (["--concurrency", "-3"], "--concurrency: expected at least 1"),
        (["--concurrency", "100000"], "at most 256"),
        (["--batch", "0"], "--batch: expected at least 1 and at most 1000 items, got 0"),
        (["--batch", "1001"], "--batch: expected at least 1"),
        (["--chain-limit", "-1"], "--chain-limit: expected at least 0 and at most 100000 nodes"),
        (["--chain-limit", "100001"], "--chain-limit: expected at least 0"),
        (["--queues", ""], "--queues: expected one or more of"),
        (["--queues", ",,"], "a worker with no queue would wait forever"),
        (["--queues", "tool,toools"], "no queue named 'toools'"),
        (["--worker-id", ""], "--worker-id: expected an id"),
        (["--worker-id", "w" * 200], "--worker-id: expected at most"),
    ],
)
def test_worker_refuses_bad_options_before_starting(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    _one_line(capsys, ["worker", "--db", "w.db", *argv], needle)
    assert not (in_tmp / "w.db").exists()  # refused before the store was opened


def test_worker_lease_zero_through_the_console_script(in_tmp: Path) -> None:
    """As the user ran it: no traceback from a worker thread, and not exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "charter.cli", "worker", "--db", "w.db", "--lease", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_USAGE
    assert done.stderr.splitlines() == [
        "charter: error: --lease: expected more than 0 and at most 86400 seconds, got 0"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("run_id", "needle"),
    [("", "expected an id, got an empty one"), ("  ", "expected an id"),
     ("r" * 129, "at most 128 characters"), ("a\nb", "printable")],
    ids=["empty", "blank", "too-long", "newline"],
)  # fmt: skip
def test_run_refuses_a_bad_run_id_instead_of_inventing_one(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], run_id: str, needle: str
) -> None:
    _one_line(
        capsys, ["run", "simple.yaml", "--db", "r.db", "--run-id", run_id], "--run-id", needle
    )
    assert not (in_tmp / "r.db").exists()


# ── stores that are not stores, plugins that are not plugins ──


@pytest.mark.parametrize("command", [["status"], ["run", "simple.yaml"], ["audit", "verify"]])
def test_db_dev_null_is_a_clear_error(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    _one_line(capsys, [*command, "--db", os.devnull], os.devnull, "not a regular file")


def test_db_directory_is_a_clear_error(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line(capsys, ["run", "simple.yaml", "--db", str(in_tmp)], "a directory")


def test_executors_naming_a_function_that_is_not_a_plugin(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _one_line(
        capsys,
        ["run", "simple.yaml", "--db", "x.db", "--executors", "os:getcwd"],
        "--executors: calling os:getcwd(registry) failed: TypeError",
    )
    assert not (in_tmp / "x.db").exists()


# ── workflow and policy files ──


def _bomb(levels: int) -> str:
    config = '      l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level in range(1, levels + 1):
        config += f"      l{level}: &l{level} [{','.join([f'*l{level - 1}'] * 9)}]\n"
    return SIMPLE.replace(
        "  t: {idempotent: true, executor: echo}\n",
        f"  t:\n    idempotent: true\n    executor: echo\n    config:\n{config}",
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_yaml_alias_bomb_in_tool_config_is_refused_at_parse_time(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    (in_tmp / "bomb.yaml").write_text(_bomb(9))  # 9^10 values once expanded
    argv = [command, "bomb.yaml"] + (["--db", "b.db"] if command == "run" else [])
    _one_line(capsys, argv, "bomb.yaml:", f"aliases expand to more than {MAX_ALIAS_VALUES:,}")
    assert not (in_tmp / "b.db").exists()


def test_recursive_alias_is_refused(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / "loop.yaml").write_text(SIMPLE + "labels: &x [*x]\n")
    _one_line(capsys, ["validate", "loop.yaml"], "alias *x refers to a value that contains it")


def test_a_few_aliases_still_work(in_tmp: Path) -> None:
    (in_tmp / "small.yaml").write_text(_bomb(2))
    definition, raw = load_workflow_file(in_tmp / "small.yaml")
    assert len(raw["tools"]["t"]["config"]["l2"]) == 9
    assert definition.workflow_id == "simple"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_huge_workflow_is_refused_first_by_size_naming_file_and_limit(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    nodes = "".join(
        f"  n{i}:\n    kind: {{type: tool, tool_ref: t, args: {{}}}}\n" for i in range(100_000)
    )
    huge = SIMPLE.replace("start_node: a", "start_node: n0").split("nodes:\n")[0]
    (in_tmp / "huge.yaml").write_text(huge + "nodes:\n" + nodes)
    argv = [command, "huge.yaml"] + (["--db", "h.db"] if command == "run" else [])
    _one_line(capsys, argv, "huge.yaml: too large", f"at most 4.0 MiB ({MAX_FILE_BYTES:,} bytes)")
    assert not (in_tmp / "h.db").exists()


def test_a_workflow_whose_stored_json_is_too_large_is_refused_by_validate(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under the file limit as YAML, over it as JSON: JSON doubles every backslash.
    blob = "\\" * 3_000_000
    text = SIMPLE.replace("args: {}", f"args: {{blob: a{blob}}}")
    assert len(text.encode()) <= MAX_FILE_BYTES
    (in_tmp / "wide.yaml").write_text(text)
    for argv in (["validate", "wide.yaml"], ["run", "wide.yaml", "--db", "w.db"]):
        _one_line(capsys, argv, "wide.yaml: too large", "as the JSON the store keeps")
    assert not (in_tmp / "w.db").exists()


def test_a_long_workflow_id_is_refused_without_echoing_it(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "long.yaml").write_text(
        SIMPLE.replace("workflow_id: simple", "workflow_id: " + "w" * 100_000)
    )
    line = _one_line(
        capsys, ["validate", "long.yaml"], "workflow_id: 100,000 characters", "at most 128"
    )
    assert len(line) < 300


def test_a_node_id_over_yamls_key_limit_is_named(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = "n" * 1100
    text = SIMPLE.replace("start_node: a", f"start_node: {node}").replace("  a:", f"  {node}:")
    (in_tmp / "node.yaml").write_text(text)
    line = _one_line(capsys, ["validate", "node.yaml"], "a key longer than 1024 characters")
    assert "mapping values" not in line


def test_a_node_id_over_the_id_limit_is_refused_by_validate(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = "n" * 200
    text = SIMPLE.replace("start_node: a", f"start_node: {node}").replace("  a:", f"  {node}:")
    (in_tmp / "node.yaml").write_text(text)
    _one_line(capsys, ["validate", "node.yaml"], "nodes.", "200 characters", "at most 128")


def test_long_workflow_and_node_ids_that_validate_also_run(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 100-character workflow id and a 110-character node id are each within the limit,
    # but `<run>/<node>/<dispatch>` is not: the item id is shortened, not refused mid-run.
    node = "n" * 110
    text = (
        SIMPLE.replace("start_node: a", f"start_node: {node}")
        .replace("  a:", f"  {node}:")
        .replace("workflow_id: simple", "workflow_id: " + "w" * 100)
    )
    (in_tmp / "long.yaml").write_text(text)
    assert main(["validate", "long.yaml"]) == 0
    assert main(["run", "long.yaml"]) == 0
    assert "workflow_completed" in capsys.readouterr().out


@given(
    run=st.text(st.characters(codec="ascii", exclude_characters="/"), min_size=1, max_size=128),
    node=st.text(st.characters(codec="ascii", exclude_characters="/"), min_size=1, max_size=128),
    dispatch=st.integers(1, 10**9),
)
def test_item_ids_fit_the_limit_are_stable_and_keep_pairs_apart(
    run: str, node: str, dispatch: int
) -> None:
    made = item_id(run, node, dispatch)
    assert len(made) <= MAX_ID_LENGTH
    assert made == item_id(run, node, dispatch)
    assert made != item_id(run + "x" if len(run) < 128 else run[:-1], node, dispatch)
    assert made != item_id(run, node, dispatch + 1)
    if len(f"{run}/{node}/{dispatch}") <= MAX_ID_LENGTH:
        assert made == f"{run}/{node}/{dispatch}"


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [("[", "'[' and ']' are not pattern syntax"), ("db.[a-z]*", "not pattern syntax"),
     ("", "an empty pattern matches no name")],
    ids=["bracket", "class", "empty"],
)  # fmt: skip
def test_policy_patterns_that_match_nothing_meant_are_refused(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], pattern: str, needle: str
) -> None:
    (in_tmp / "policy.yaml").write_text(f'blocked_tools: ["ok", "{pattern}"]\n')
    _one_line(capsys, ["check", "policy.yaml", "--tool", "x"], "blocked_tools[1]", needle)
    (in_tmp / "wf.yaml").write_text(SIMPLE + f'policy: {{require_approval_for: ["{pattern}"]}}\n')
    assert main(["validate", "wf.yaml"]) == EXIT_USAGE  # a workflow lists every problem
    err = capsys.readouterr().err
    assert "policy.require_approval_for[0]" in err
    assert needle in err
    _one_line(
        capsys, ["tenant", "acme", "--policy", "policy.yaml", "--db", "t.db"], "blocked_tools[1]"
    )


SECRET = "root:$6$s4lt$Zm9vYmFyYmF6cXV4c2VjcmV0aGFzaA:19000:0:99999:7:::"


@pytest.mark.parametrize(
    "content",
    [
        f"{SECRET}\ndaemon:*:19000:0:99999:7:::\n",  # /etc/shadow: every line a YAML key
        f"{SECRET}\nsecond line of text\n",  # /etc/passwd-like: one multi-line string
        "password: hunter2-secret\nother: value\n",
        "- hunter2-secret\n",
    ],
    ids=["shadow", "text", "mapping", "list"],
)
def test_a_file_that_is_not_a_workflow_or_policy_is_never_echoed(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    (in_tmp / "shadow").write_text(content)
    for argv in (
        ["validate", "shadow"],
        ["run", "shadow", "--db", "s.db"],
        ["check", "shadow", "--tool", "x"],
    ):
        line = _one_line(capsys, argv, "shadow")
        for secret in ("hunter2", "s4lt", "root", "daemon"):
            assert secret not in line
    assert not (in_tmp / "s.db").exists()


# ── approvals of what is not there ──


def test_approving_in_an_unknown_run_names_it(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "hold.yaml", "--db", "h.db", "--run-id", "h1", "--quiet"]) == EXIT_WAITING
    capsys.readouterr()
    _one_line(capsys, ["approve", "nosuch", "a", "--user", "u", "--db", "h.db"], "no run 'nosuch'")


def test_require_node_names_a_node_the_run_does_not_have(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check `approve` / `reject` / `resolve` make before answering (`require_node`)."""
    assert main(["run", "hold.yaml", "--db", "h.db", "--run-id", "h1", "--quiet"]) == EXIT_WAITING
    capsys.readouterr()
    store = SqliteStore(in_tmp / "h.db")
    try:
        execution = require_run(store, "h1")
        require_node(store, execution, "a")
        with pytest.raises(InvalidInput, match="run 'h1' has no node named 'nosuch'"):
            require_node(store, execution, "nosuch")
    finally:
        store.close()


# ── read commands never write ──


@pytest.fixture
def waiting_db(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    """A database holding one run waiting for approval, made read-only (0444, in a 0555
    directory) once written."""
    folder = in_tmp / "ro"
    folder.mkdir()
    db = folder / "r.db"
    assert main(["run", "hold.yaml", "--db", str(db), "--run-id", "h1", "--quiet"]) == 3
    capsys.readouterr()
    for extra in folder.glob("r.db-*"):  # closed cleanly: nothing left but the file
        extra.unlink()
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        yield db
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)


READS = [
    ["status"],
    ["status", "h1"],
    ["status", "--json"],
    ["events", "h1"],
    ["approvals"],
    ["audit", "verify"],
    ["audit", "anchor"],
    ["audit", "replay", "h1"],
    ["audit", "replay", "--all"],
]


@pytest.mark.parametrize("argv", READS, ids=[" ".join(a) for a in READS])
def test_read_commands_open_the_store_read_only_and_change_nothing(
    waiting_db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    opened: list[bool] = []
    original = open_connection

    def spy(*args: object, read_only: bool = False, **kwargs: object) -> sqlite3.Connection:
        opened.append(read_only)
        return original(*args, read_only=read_only, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("charter.adapters.sqlite.open_connection", spy)
    before = _digest(waiting_db)
    code = main([*argv, "--db", str(waiting_db)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "readonly" not in out + err
    assert opened == [True]
    assert _digest(waiting_db) == before


def test_read_commands_work_where_the_os_refuses_writes(waiting_db: Path) -> None:
    """As an unprivileged user would see it: the root running the tests drops the
    capabilities that let it write to read-only files."""
    setpriv = "/usr/bin/setpriv"
    if os.geteuid() != 0 or not Path(setpriv).exists():
        pytest.skip("needs root and setpriv to take away the right to write")
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    before = _digest(waiting_db)
    for argv in (["status", "h1"], ["events", "h1"], ["approvals"], ["audit", "verify"]):
        done = subprocess.run(
            [*drop, sys.executable, "-m", "charter.cli", *argv, "--db", str(waiting_db)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "readonly" not in done.stderr
    done = subprocess.run(
        [*drop, sys.executable, "-m", "charter.cli", "cancel", "h1", "--db", str(waiting_db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_USAGE
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot be written" in done.stderr
    assert sorted(p.name for p in waiting_db.parent.iterdir()) == ["r.db"]
    assert _digest(waiting_db) == before


def test_a_read_only_store_refuses_every_write(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    store = SqliteStore(db, read_only=True)
    try:
        assert store.get_tenant(DEFAULT_TENANT) is not None
        now = store.clock.now()
        with pytest.raises(StoreError, match="opened read-only"):
            store.put_tenant(Tenant(tenant_id="t", name="t", created_at=now, updated_at=now))
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._conn.execute("CREATE TABLE x (y)")  # query_only: not even behind our back
    finally:
        store.close()
    assert SqliteStore(db).get_tenant("t") is None


def test_a_read_only_open_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such database"):
        open_store(tmp_path / "missing.db", read_only=True)
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_open_of_a_store_needing_migration_says_so(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    SqliteStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = _digest(db)
    with pytest.raises(IncompatibleStore, match="needs migrating from schema version 1"):
        SqliteStore(db, read_only=True)
    assert _digest(db) == before


def test_a_read_only_open_of_another_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"my notes, not a database" * 100)
    with pytest.raises(IncompatibleStore):
        SqliteStore(db, read_only=True)


# ── a full disk ──


def test_a_full_disk_is_one_line_and_nothing_half_written(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    big = SIMPLE.replace("args: {}", "args: {blob: " + "x" * 60_000 + "}")
    (in_tmp / "big.yaml").write_text(big)
    db = in_tmp / "full.db"
    SqliteStore(db).close()
    original = open_connection

    def small_disk(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = original(*args, **kwargs)  # type: ignore[arg-type]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # not one page more
        return conn

    monkeypatch.setattr("charter.adapters.sqlite.open_connection", small_disk)
    _one_line(capsys, ["run", "big.yaml", "--db", str(db)], "the disk is full", "rolled back")
    monkeypatch.undo()
    store = SqliteStore(db)
    try:
        assert store.list_executions().items == ()  # the run was not half-started
    finally:
        store.close()


# ── logging, --version ──


def test_the_connection_pool_is_quiet_in_the_cli(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg_pool warns for each broken connection it discards (about 200 lines under
    backend kills): the CLI shows only its errors, and nothing under --quiet."""
    seen: dict[str, int] = {}
    original = open_connection

    def note_levels(*args: object, **kwargs: object) -> sqlite3.Connection:
        seen["pool"] = logging.getLogger("psycopg.pool").getEffectiveLevel()
        logging.getLogger("psycopg.pool").warning("discarding broken connection: <conn>")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("charter.adapters.sqlite.open_connection", note_levels)
    assert main(["run", "simple.yaml", "--db", "q.db", "--quiet"]) == 0
    _out, err = capsys.readouterr()
    assert seen["pool"] > logging.CRITICAL
    assert "discarding" not in err
    assert main(["run", "simple.yaml", "--db", "q.db"]) == 0
    _out, err = capsys.readouterr()
    assert seen["pool"] == logging.ERROR
    assert "discarding" not in err
    assert logging.getLogger("psycopg.pool").level == logging.NOTSET  # restored


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "charter.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"charter {__version__}"

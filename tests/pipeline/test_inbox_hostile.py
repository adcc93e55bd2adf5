"""The inbox as an attack surface: links, FIFOs, sockets, oversized and poisoned files against the
real inbox sensor (temp-dir Dagster instance), and the bounded reads that judge a file finished.
Every tick runs in a thread with a deadline: a hang fails the test instead of blocking CI."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
import tracemalloc
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from dsel_assets.pipeline.assets.ingest import inbox
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.store.tables import Writes
from resources import InboxSettings, build_resources
from resources.store import StateStore

from ..helpers import qa_lines, small_tmpfs, write_jsonl

DEADLINE_S = 20
SECRET = "SECRET=hunter2"


@pytest.fixture()
def sensor(home, monkeypatch):
    """(tick, home): ``tick(cursor, **inbox_settings)`` evaluates the real inbox sensor once."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    defs = build_definitions(home, model="tiny", device="cpu")
    base = build_resources(home, model="tiny", device="cpu")
    with dg.instance_for_test(temp_dir=str(home.dagster)) as instance:

        def tick(cursor: str | None, resources: dict | None = None, **settings) -> dg.SensorResult:
            inbox_settings = InboxSettings(path=str(home.inbox), **settings)
            res = {**base, "inbox_settings": inbox_settings, **(resources or {})}
            # closed here, in order: an unclosed context's resources leave Dagster's process-wide
            # definitions-state storage pointing at a dead instance
            with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=res) as context:
                result = within_deadline(lambda: defs.resolve_sensor_def("inbox_sensor")(context))
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            return result

        yield tick, home


def within_deadline(fn):
    """``fn()``, failing the test if it takes longer than :data:`DEADLINE_S` (a blocked open)."""
    box: dict = {}

    def call() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        pytest.fail(f"blocked for more than {DEADLINE_S}s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def ticks(tick, n: int, **settings) -> list[dg.SensorResult]:
    results, cursor = [], None
    for _ in range(n):
        results.append(tick(cursor, **settings))
        cursor = results[-1].cursor
    return results


def raw_bytes(home) -> list[bytes]:
    return [p.read_bytes() for p in Path(home.raw).rglob("*") if p.is_file() and not p.is_symlink()]


def set_aside(home, name: str) -> Path:
    """The entry under ``inbox/rejected/`` (as it is: lstat), with a reason file beside it."""
    entry = home.inbox / inbox.REJECTED / name
    assert os.path.lexists(entry), sorted(os.listdir(home.inbox / inbox.REJECTED))
    assert Path(f"{entry}.reason.txt").is_file()
    return entry


def test_symlinks_to_secrets_are_set_aside_never_copied(sensor, tmp_path):
    tick, home = sensor
    secret = tmp_path / "secrets.env"
    secret.write_text(SECRET + "\n")
    token = tmp_path / "token.json"  # a secret that even parses as a finished JSON-lines file
    token.write_text(json.dumps({"question": "token", "answer": SECRET}) + "\n")
    (home.inbox / "leak.jsonl").symlink_to(secret)
    (home.inbox / "token.jsonl").symlink_to(token)
    (home.inbox / "environ.jsonl").symlink_to("/proc/self/environ")
    results = ticks(tick, 3, grace_seconds=0)  # grace 0: an unfinished file would be taken at once
    assert not [r for result in results for r in result.run_requests]
    assert not any(b"hunter2" in data for data in raw_bytes(home)) and not raw_bytes(home)
    for name, target in [("leak.jsonl", secret), ("token.jsonl", token), ("environ.jsonl", "/proc/self/environ")]:
        entry = set_aside(home, name)
        assert entry.is_symlink() and os.readlink(entry) == str(target)  # the link moved, not its target
        assert "symlink" in Path(f"{entry}.reason.txt").read_text()
    assert secret.read_text() == SECRET + "\n"
    assert json.loads(results[-1].cursor) == {}


def test_fifo_socket_and_folder_entries_never_block_the_tick(sensor, tmp_path):
    tick, home = sensor
    os.mkfifo(home.inbox / "pipe.jsonl")
    os.mkfifo(tmp_path / "outside-pipe")
    (home.inbox / "linked-pipe.jsonl").symlink_to(tmp_path / "outside-pipe")
    (home.inbox / "folder.jsonl").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home.inbox / "sock.jsonl"))
    write_jsonl(home.inbox / "good.jsonl", qa_lines(0, 3))
    try:
        results = ticks(tick, 2)
    finally:
        listener.close()
    assert [r.tags["dsel/file"] for r in results[1].run_requests] == ["good.jsonl"]
    assert stat.S_ISFIFO(os.lstat(set_aside(home, "pipe.jsonl")).st_mode)
    assert set_aside(home, "linked-pipe.jsonl").is_symlink()
    assert set_aside(home, "folder.jsonl").is_dir()
    assert stat.S_ISSOCK(os.lstat(set_aside(home, "sock.jsonl")).st_mode)
    reasons = {p.name: p.read_text() for p in (home.inbox / inbox.REJECTED).glob("*.reason.txt")}
    assert "fifo" in reasons["pipe.jsonl.reason.txt"] and "socket" in reasons["sock.jsonl.reason.txt"]
    assert len(raw_bytes(home)) == 1  # good.jsonl only


def test_looks_complete_on_a_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(inbox.SetAside, match="fifo"):
        within_deadline(lambda: inbox.looks_complete(tmp_path / "pipe.jsonl"))


def test_symlinked_split_folder_is_not_followed(sensor, tmp_path):
    tick, home = sensor
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "creds.jsonl").write_text(json.dumps({"question": "password", "answer": SECRET}) + "\n")
    (home.inbox / "query").symlink_to(outside)
    results = ticks(tick, 2)
    assert not results[1].run_requests and not raw_bytes(home)
    assert set_aside(home, "query").is_symlink()
    assert (outside / "creds.jsonl").is_file()  # the target folder is left as it was


def test_file_over_the_size_cap_is_set_aside_not_copied(sensor):
    tick, home = sensor
    write_jsonl(home.inbox / "big.jsonl", qa_lines(0, 200))
    write_jsonl(home.inbox / "small.jsonl", qa_lines(0, 2))
    assert (home.inbox / "big.jsonl").stat().st_size > 4000 > (home.inbox / "small.jsonl").stat().st_size
    results = ticks(tick, 2, max_file_bytes=4000)
    assert [r.tags["dsel/file"] for r in results[1].run_requests] == ["small.jsonl"]
    big = set_aside(home, "big.jsonl")
    assert big.is_file() and "cap" in Path(f"{big}.reason.txt").read_text()
    assert len(raw_bytes(home)) == 1


def test_poisoned_file_neither_raises_nor_blocks_the_others(sensor, monkeypatch):
    tick, home = sensor
    real = Writes.register_batch

    def register_batch(db, path: Path, *args, **kwargs):
        if path.name == "bad.jsonl":  # an I/O fault on this one file only
            raise RuntimeError("simulated read fault")
        return real(db, path, *args, **kwargs)

    monkeypatch.setattr(Writes, "register_batch", register_batch)
    write_jsonl(home.inbox / "bad.jsonl", qa_lines(0, 2))
    write_jsonl(home.inbox / "good.jsonl", qa_lines(10, 12))
    second = tick(tick(None, max_attempts=3).cursor, max_attempts=3)
    assert [r.tags["dsel/file"] for r in second.run_requests] == ["good.jsonl"]
    assert len(second.dynamic_partitions_requests) == 1
    assert json.loads(second.cursor)["bad.jsonl"][3] == 1  # failures so far
    third = tick(second.cursor, max_attempts=3)
    assert json.loads(third.cursor)["bad.jsonl"][3] == 2 and (home.inbox / "bad.jsonl").exists()
    fourth = tick(third.cursor, max_attempts=3)
    assert not fourth.run_requests and json.loads(fourth.cursor) == {}
    reason = Path(f"{set_aside(home, 'bad.jsonl')}.reason.txt").read_text()
    assert "failed 3 ticks" in reason and "simulated read fault" in reason
    assert list((home.inbox / inbox.INGESTED).glob("*-good.jsonl"))


def test_undecodable_file_name_is_retried_then_set_aside(sensor):
    """A real poison: a name that is not UTF-8 fails in the database every tick; it used to be
    retried forever."""
    tick, home = sensor
    bad = os.path.join(os.fsencode(home.inbox), b"bad\xff.jsonl")
    with open(bad, "wb") as fh:
        fh.write(b"".join(line.encode() + b"\n" for line in qa_lines(0, 2)))
    write_jsonl(home.inbox / "good.jsonl", qa_lines(10, 12))
    results = ticks(tick, 5, max_attempts=2)
    assert [r.tags["dsel/file"] for result in results for r in result.run_requests] == ["good.jsonl"]
    assert os.path.lexists(os.path.join(os.fsencode(home.inbox), b"rejected", b"bad\xff.jsonl"))
    assert not os.path.lexists(bad) and json.loads(results[-1].cursor) == {}


def test_planted_archive_link_is_refused_and_the_batch_still_runs(sensor, tmp_path):
    tick, home = sensor
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home.inbox / inbox.INGESTED).symlink_to(elsewhere)
    write_jsonl(home.inbox / "good.jsonl", qa_lines(0, 2))
    results = ticks(tick, 4, max_attempts=2)
    assert [r.tags["dsel/file"] for result in results for r in result.run_requests] == ["good.jsonl"]
    assert not list(elsewhere.iterdir())  # nothing moved through the planted link
    assert "not a real folder" in Path(f"{set_aside(home, 'good.jsonl')}.reason.txt").read_text()


def test_locked_database_counts_against_no_file(sensor):
    tick, home = sensor

    class Locked(StateStore):
        def get_connection(self):
            raise duckdb.IOException("Could not set lock on file")

    write_jsonl(home.inbox / "good.jsonl", qa_lines(0, 2))
    cursor = None
    for _ in range(5):
        result = tick(cursor, resources={"store": Locked(database=str(home.duckdb))}, max_attempts=2)
        cursor = result.cursor
    assert not result.run_requests and (home.inbox / "good.jsonl").exists()
    assert json.loads(cursor)["good.jsonl"][3] == 0
    assert len(tick(cursor).run_requests) == 1


@pytest.fixture()
def small_disk(home):
    """``(resize, raw)``: the raw store on a 64 KiB tmpfs (see :func:`small_tmpfs`)."""
    with small_tmpfs(Path(home.raw)) as resize:
        yield resize, Path(home.raw)


def test_full_disk_counts_against_no_file_and_loses_nothing(sensor, small_disk):
    """A file larger than the room left is retried tick after tick, never set aside, and leaves
    no partial copy; once there is room it is ingested whole."""
    tick, home = sensor
    resize, raw = small_disk
    write_jsonl(home.inbox / "big.jsonl", qa_lines(0, 3000))
    original = (home.inbox / "big.jsonl").read_bytes()
    assert len(original) > 64 << 10
    results = ticks(tick, 5, max_attempts=2)  # one tick to settle, four that hit the full disk
    assert not any(r.run_requests for r in results)
    assert json.loads(results[-1].cursor)["big.jsonl"][3] == 0  # failures counted: none
    assert (home.inbox / "big.jsonl").read_bytes() == original
    assert not os.path.lexists(home.inbox / inbox.REJECTED / "big.jsonl")
    assert not [p for p in raw.rglob("*") if p.is_file()]  # no partial copy left behind
    resize(4096)
    result = tick(results[-1].cursor, max_attempts=2)
    assert [r.tags["dsel/file"] for r in result.run_requests] == ["big.jsonl"]
    assert raw_bytes(home) == [original]


def test_no_room_recognises_the_os_and_library_forms():
    assert inbox.no_room(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert inbox.no_room(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert inbox.no_room(duckdb.IOException(f"Could not write file: {os.strerror(errno.ENOSPC)}"))
    assert not inbox.no_room(OSError(errno.EACCES, os.strerror(errno.EACCES)))
    assert not inbox.no_room(RuntimeError("simulated read fault"))


def test_unreadable_cursor_starts_afresh(sensor):
    tick, home = sensor
    write_jsonl(home.inbox / "good.jsonl", qa_lines(0, 2))
    assert json.loads(tick("not json").cursor)["good.jsonl"][3] == 0
    assert json.loads(tick("[1, 2]").cursor)["good.jsonl"][3] == 0


def test_file_swapped_for_a_link_after_the_scan_is_not_registered(tmp_path):
    root = tmp_path / "inbox"
    root.mkdir()
    write_jsonl(root / "p.jsonl", qa_lines(0, 2))
    _, state, _ = inbox.scan(root, {}, 0.0, 600)
    (ready,), _, _ = inbox.scan(root, state, 1.0, 600)
    assert inbox.unchanged(ready)
    (tmp_path / "secret").write_text(SECRET)
    os.replace(root / "p.jsonl", tmp_path / "moved.jsonl")
    (root / "p.jsonl").symlink_to(tmp_path / "secret")
    assert not inbox.unchanged(ready)


def test_looks_complete_reads_only_the_tail(tmp_path):
    # ~20 MB of JSON lines: judged from its tail, without reading the whole file into memory
    big = write_jsonl(tmp_path / "big.jsonl", qa_lines(0, 20) * 18_000)
    assert big.stat().st_size > 20_000_000
    tracemalloc.start()
    try:
        assert inbox.looks_complete(big) == (True, "")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    # a long JSON document broken in its middle: judged finished (validation quarantines its rows)
    doc = tmp_path / "doc.json"
    rows = [{"instruction": "Name a colour.", "output": "Blue."}] * 5000
    doc.write_text(json.dumps(rows)[:-1] + ', {"broken": } ,' + json.dumps(rows)[1:])
    assert inbox.looks_complete(doc) == (True, "")
    doc.write_text(json.dumps(rows)[:-2])  # still being written
    assert inbox.looks_complete(doc)[0] is False
    # a cut last line; a tail window starting inside a multi-byte character; a last line longer
    # than the window
    cut = write_jsonl(tmp_path / "cut.jsonl", qa_lines(0, 5000))
    with cut.open("ab") as fh:
        fh.write(b'{"question": "unfinished')
    assert inbox.looks_complete(cut)[0] is False
    for pad in ("", "x"):  # one of the two starts the tail window inside a 2-byte character
        wide = [json.dumps({"question": pad + "é" * 60_000}, ensure_ascii=False), qa_lines(0, 1)[0]]
        assert inbox.looks_complete(write_jsonl(tmp_path / "wide.jsonl", wide)) == (True, "")
    long_line = json.dumps({"question": "q" * 100_000, "answer": "a"})
    write_jsonl(tmp_path / "long.jsonl", [long_line])
    assert inbox.looks_complete(tmp_path / "long.jsonl") == (True, "")
    (tmp_path / "long-cut.jsonl").write_text(long_line[:-3])
    assert inbox.looks_complete(tmp_path / "long-cut.jsonl")[0] is False


def test_parquet_judged_by_its_footer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["a"] * 1000, "answer": ["b"] * 1000}), path)
    assert inbox.looks_complete(path) == (True, "")
    (tmp_path / "cut.parquet").write_bytes(path.read_bytes()[:-20])
    complete, problem = inbox.looks_complete(tmp_path / "cut.parquet")
    assert not complete and "footer" in problem


def test_scan_state_is_bounded_and_split_folder_impostors_are_set_aside(tmp_path):
    root = tmp_path / "inbox"
    root.mkdir()
    for i in range(5):
        write_jsonl(root / f"p{i}.jsonl", qa_lines(0, 1))
    (root / "eval").write_text("not a folder")
    _, state, log = inbox.scan(root, {}, 0.0, 600, max_entries=3)
    assert len(state) == 2 and any("first 3" in line for line in log)  # the third: eval, set aside
    assert json.loads(json.dumps(state)) == state
    assert (root / inbox.REJECTED / "eval").read_text() == "not a folder"
    assert "in place of the eval/ folder" in (root / inbox.REJECTED / "eval.reason.txt").read_text()


def test_byte_order_mark_is_a_finished_file(tmp_path):
    doc = tmp_path / "bom.json"
    doc.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "Hi.", "output": "Hello."}]).encode())
    assert inbox.looks_complete(doc) == (True, "")

"""The SQLite store, on a real database file."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest
from structlog.testing import capture_logs

from supervisor.core.nodes import NodeRecord
from supervisor.daemon.store import SCHEMA_VERSION, Store, StoreError
from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Accelerator, Health, NodeState


def record(node: str, last_seen: float = 100.0, state: NodeState = NodeState.UP) -> NodeRecord:
    return NodeRecord(
        node=node,
        accelerator=Accelerator.SIM_ASCEND,
        state=state,
        chips=(ChipStatus(index=0, health=Health.CRITICAL, error_codes=("sim:chip_error",)),),
        last_seen=last_seen,
    )


def test_nodes_and_events_survive_reopening(tmp_path):
    store = Store(tmp_path / "state.db")
    store.save([record("n1"), record("n2", state=NodeState.LOST)], [(5.0, "node.lost", {"node": "n2", "silent_for_s": 3.0})])
    store.close()
    again = Store(tmp_path / "state.db")
    loaded = {r.node: r for r in again.load_nodes()}
    assert loaded["n1"] == record("n1")
    assert loaded["n2"].state is NodeState.LOST
    assert again.events() == [{"ts": 5.0, "event": "node.lost", "node": "n2", "silent_for_s": 3.0}]


def test_the_database_is_in_wal_mode(tmp_path):
    Store(tmp_path / "state.db").close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_heartbeat_times_update_without_rewriting_the_record(tmp_path):
    store = Store(tmp_path / "state.db")
    store.save([record("n1", last_seen=100.0)], [])
    store.save([], [], seen=[("n1", 250.0)])
    (loaded,) = store.load_nodes()
    assert loaded.last_seen == 250.0
    assert loaded.chips[0].health is Health.CRITICAL


def test_a_full_disk_raises_a_clear_error_and_a_later_save_loses_nothing(tmp_path):
    store = Store(tmp_path / "state.db")
    store.save([record("n0")], [])
    # SQLite's own page limit makes the disk "full" for real: the same SQLITE_FULL path.
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count={pages}")
    events = [(float(i), "chip.health_changed", {"node": "n1", "evidence": "x" * 2000}) for i in range(50)]
    with pytest.raises(StoreError, match="cannot write to .*full"):
        store.save([record("n1")], events)
    assert [r.node for r in store.load_nodes()] == ["n0"], "a failed batch must not half-apply"
    store.connection.execute("PRAGMA max_page_count=1073741823")
    store.save([record("n1")], events)
    assert [r.node for r in store.load_nodes()] == ["n0", "n1"]
    assert len(store.events()) == 50


def test_a_database_from_a_newer_trainguard_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer trainguard"):
        Store(tmp_path / "state.db")


def test_a_file_that_is_not_a_database_names_the_file_and_what_to_do(tmp_path):
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as info:
        Store(tmp_path / "state.db")
    message = str(info.value)
    assert f"the state database {tmp_path / 'state.db'} is damaged or not an SQLite database" in message
    assert f"mv {tmp_path / 'state.db'} {tmp_path / 'state.db'}.broken" in message
    assert "rebuilds its node table as agents re-register; the events stored in it are lost" in message


def test_a_database_damaged_inside_is_reported_when_read_with_what_to_do(tmp_path):
    store = Store(tmp_path / "state.db")
    store.save([record(f"n{i}") for i in range(200)], [])
    store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with open(tmp_path / "state.db", "r+b") as f:  # keep the header page, break the rest
        f.seek(4096)
        f.write(b"\xde\xad" * 20000)
    with pytest.raises(StoreError, match="is damaged or not an SQLite database.*Move it aside"):
        Store(tmp_path / "state.db").load_nodes()


def test_an_unreadable_row_is_left_out_and_reported_with_its_node(tmp_path):
    store = Store(tmp_path / "state.db")
    store.save([record("n1"), record("n4")], [])
    store.connection.execute("INSERT INTO nodes VALUES ('n2', 'up', 'sim-ascend', 1.0, '{\"garbage\": true}')")
    store.connection.execute("INSERT INTO nodes VALUES ('n3', 'up', 'sim-ascend', 'later', ?)",
                      (msgspec.json.encode(record("n3")).decode(),))
    store.connection.execute("UPDATE nodes SET record=? WHERE node='n4'", (msgspec.json.encode(record("n1")).decode(),))
    with capture_logs() as logs:
        assert [r.node for r in store.load_nodes()] == ["n1"]
    unreadable = [(e["node"], e["error"]) for e in logs if e["event"] == "store.row_unreadable"]
    assert unreadable == [
        ("n2", "Object missing required field `node`"),
        ("n3", "last_seen is str, not a time"),
        ("n4", "the row for 'n4' holds the record of 'n1'"),
    ]
    assert all(e["log_level"] == "warning" and "registers again" in e["action"] for e in logs)

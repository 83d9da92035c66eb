"""`status` on the wire: the daemon's pages read back typed and unchanged, a hostile or
broken reply is refused with a reason (never a traceback), and `--json` is the text
json.dumps writes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cli import jsontext
from supervisor.core.cluster import Cluster
from supervisor.shared.protocol import ChipStatus, ProtocolError, decode, encode
from supervisor.shared.statusview import decode_status_reply
from supervisor.shared.vocab import Health
from tests.conftest import trainguard
from tests.test_cluster_core import CLIENT, CONFIG, T0, at, ctl, deliver, event, only_reply, register

pytestmark = pytest.mark.timeout(60)


def _as_sent(value: Any) -> Any:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(value))


def _status_frame() -> bytes:
    cluster = Cluster(CONFIG, instance="d", started=T0)
    deliver(cluster, register("n1"), at(0))
    deliver(cluster, register("n2", chips=3), at(1))
    deliver(cluster, event(name="chip.health_changed", fields={"status": {"index": 0, "health": "warning"}}), at(2))
    cluster.tick(at(16))  # n1 lost
    return encode(only_reply(cluster.on_ctl_request(CLIENT, ctl("status"), at(20))))


def test_a_status_page_reads_back_typed_exactly_as_the_daemon_sent_it() -> None:
    frame = _status_frame()
    typed = decode_status_reply(frame)
    assert typed.ok and typed.result is not None and [n.node for n in typed.result.nodes] == ["n1", "n2"]
    assert typed.result.nodes[0].chips[0] == ChipStatus(index=0, health=Health.WARNING)
    # Nothing the daemon sent is lost or changed by reading it typed.
    assert _as_sent(typed.result) == _as_sent(decode(frame, limit=len(frame)).result)


def _mangled(path: list[Any], value: Any) -> bytes:
    reply = msgspec.msgpack.decode(_status_frame())
    where = reply["result"]
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return msgspec.msgpack.encode(reply)


@pytest.mark.parametrize("path, value", [
    (["nodes", 0, "chips", 0, "temperature_c"], float("nan")),
    (["nodes", 0, "last_heartbeat_age_s"], float("inf")),
    (["nodes", 0, "state"], "exploded"),
    (["nodes", 0, "hostname"], "h" * 5000),
    (["nodes", 0, "chips"], {"not": "a list"}),
    (["nodes", 1], "a string for a node"),
    (["page", "next_offset"], -1),
    (["jobs"], [{1: "a key that is not a string"}]),
    (["daemon", "uptime_s"], float("nan")),
    (["summary"], {"deep": [[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]}),
])
def test_a_status_reply_that_is_not_valid_is_refused_with_a_reason(path: list[Any], value: Any) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_status_reply(_mangled(path, value))
    assert refused.value.reason == "invalid"


def test_a_status_reply_without_its_envelope_is_refused() -> None:
    for frame, reason in ((b"\xc1garbage", "malformed"), (msgspec.msgpack.encode({"v": 2, "type": "ctl_reply"}),
                                                          "unknown_version")):
        with pytest.raises(ProtocolError) as refused:
            decode_status_reply(frame)
        assert refused.value.reason == reason


def _answer_once(endpoint: str, reply: Any, ready: threading.Event, deadline: float) -> None:
    """A daemon's control socket that answers one request with `reply` (its ref set)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    ready.set()
    try:
        while time.monotonic() < deadline:
            if sock.poll(100):
                client, frame = sock.recv_multipart()
                reply["ref"] = msgspec.msgpack.decode(frame)["id"]
                sock.send_multipart([client, msgspec.msgpack.encode(reply)])
                return
    finally:
        sock.close(linger=0)


@pytest.mark.slow
def test_status_json_says_a_broken_reply_is_garbage_without_a_traceback(tmp_path: Path) -> None:
    reply = msgspec.msgpack.decode(_status_frame())
    reply["result"]["nodes"][0]["chips"][0]["temperature_c"] = float("nan")
    endpoint = f"ipc://{tmp_path}/ctl.sock"
    ready = threading.Event()
    server = threading.Thread(target=_answer_once, args=(endpoint, reply, ready, time.monotonic() + 30))
    server.start()
    assert ready.wait(10)
    result = trainguard("status", "--json", "--ctl", endpoint, "--timeout", "10s")
    server.join(30)
    assert result.returncode == 1 and result.stdout == ""
    assert f"the daemon at {endpoint} answered garbage" in result.stderr and "temperature_c" in result.stderr
    assert "Traceback" not in result.stderr


# --- the --json text ---------------------------------------------------------------------

def test_a_float_below_1e_4_is_written_as_json_dumps_writes_it() -> None:
    """Regression: msgspec writes 1e-05 as 0.00001, and the check that sent such text to
    json.dumps looked only for an exponent, so `status --json` printed a small loss or
    reading otherwise than json.dumps does."""
    value = {"loss": 1e-05, "small": -9.9e-05, "in_list": [5e-05, 0.0001], "text": "0.00001"}
    assert jsontext.dumps(value).decode() == json.dumps(value, indent=2, sort_keys=True)


def test_many_strings_with_a_digit_before_an_e_are_still_written_by_msgspec(monkeypatch) -> None:
    """Regression: a job id such as scale-af8e53 is in each running rank of a status, and
    past 1,000 such places the text was left to json.dumps: 2 s instead of 0.2 for
    10,000 nodes."""
    value = {"running": [{"job": "scale-af8e53", "rank": r, "loss": 1.5} for r in range(8000)], "tiny": "1e-05"}
    monkeypatch.setattr(jsontext, "_json_dumps", lambda v: pytest.fail("json.dumps was asked"))
    assert jsontext.dumps(value).decode() == json.dumps(value, indent=2, sort_keys=True)
    value["running"][7999]["loss"] = 1e-05  # and one real float to mend among them
    assert jsontext.dumps(value).decode() == json.dumps(value, indent=2, sort_keys=True)


_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from([1e-05, 1e16, -1.5e-7, 5e-324, 1e22, 0.1, -0.0, 123456789012345.6])
            | st.text(st.characters(blacklist_categories=("Cs",)))
            | st.sampled_from(["3e4f9a", "x,1e5]", "a: 1e16", "0.00001", "…clipped", "\x7f", "\\u007f", "é\"\\"]))
_json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
                                              | st.sampled_from(["1e5", "e", "ü"]), inner, max_size=4),
                            max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_json_values)
def test_json_text_is_the_text_json_dumps_writes(value: Any) -> None:
    assert jsontext.dumps(value).decode() == json.dumps(value, indent=2, sort_keys=True)


def test_json_text_of_structs_is_that_of_their_fields() -> None:
    typed = decode_status_reply(_status_frame()).result
    assert jsontext.dumps(typed).decode() == json.dumps(_as_sent(typed), indent=2, sort_keys=True)

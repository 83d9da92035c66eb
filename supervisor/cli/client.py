"""The CLI's side of the control endpoint: one request, one reply.

Read-only verbs are retried with tenacity until the deadline (a daemon that is just
starting answers a moment later); verbs that change something are sent once, so a slow
daemon never gets the same fault injected twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import tenacity
import zmq

from supervisor.shared import keys
from supervisor.shared.protocol import MAX_REPLY_BYTES, CtlReply, CtlRequest, ProtocolError, decode, encode, new_id
from supervisor.shared.statusview import StatusNode, StatusPage, StatusReply, decode_status_reply

READ_ONLY_VERBS = frozenset({"ping", "status", "policies"})


class ClientError(Exception):
    """The daemon could not be asked, or said no. `code` is the daemon's error code, or
    `unreachable` when no answer came."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _NoReply(Exception):
    pass


def _decode_reply(frame: bytes) -> Any:
    return decode(frame, limit=MAX_REPLY_BYTES)


def request(endpoint: str, verb: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
            decode_reply: Callable[[bytes], Any] = _decode_reply) -> Any:
    """Ask the daemon at `endpoint`; return its result or raise ClientError. The reply is
    read with `decode_reply` (a CtlReply by default; a verb may have a typed one)."""
    req = CtlRequest(id=new_id(), ts=time.time(), verb=verb, args=args or {})
    if verb in READ_ONLY_VERBS:
        attempt_timeout = min(1.0, timeout)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(max(0.0, timeout - attempt_timeout)),
            wait=tenacity.wait_exponential(multiplier=0.1, max=1.0),
            retry=tenacity.retry_if_exception_type(_NoReply),
            reraise=True,
        )
    else:
        attempt_timeout = timeout
        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(1), reraise=True)
    try:
        reply = retrying(_attempt, endpoint, req, attempt_timeout, decode_reply)
    except _NoReply:
        raise ClientError(
            f"no answer from the trainguard daemon at {endpoint} within {timeout:g}s "
            "(is `trainguard daemon` running there? the endpoint comes from --ctl or TRAINGUARD_CTL; "
            "a tcp endpoint of a secure daemon also needs an admin key pair in TRAINGUARD_KEYS_DIR)",
            "unreachable",
        ) from None
    if not reply.ok:
        raise ClientError(reply.error or "the daemon refused without a reason", reply.code or "error")
    return reply.result


def _admin_keys(endpoint: str) -> tuple[bytes, bytes, bytes] | None:
    """(public, secret, daemon public) for a tcp control endpoint, when this machine has
    an admin key pair in $TRAINGUARD_KEYS_DIR (default /etc/trainguard/keys). An ipc
    endpoint is guarded by its file permissions instead."""
    if not endpoint.startswith("tcp://"):
        return None
    directory = Path(os.environ.get("TRAINGUARD_KEYS_DIR") or "/etc/trainguard/keys")
    if not (directory / "admin.key_secret").exists():
        return None
    try:
        public, secret = keys.load_pair(directory, "admin")
        return public, secret, keys.load_public(directory / "daemon.key")
    except keys.KeyError_ as exc:
        raise ClientError(str(exc), "bad_key") from None


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _attempt(endpoint: str, req: CtlRequest, timeout: float, decode_reply: Callable[[bytes], Any]) -> Any:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keys = _admin_keys(endpoint)
    if keys is not None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys[2])
    # A refused handshake is silence on the socket itself; only a monitor sees it, and
    # "refused: not authorised" is what the operator must read, not "no answer".
    monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED) if endpoint.startswith("tcp://") else None
    try:
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ClientError(f"bad control endpoint {endpoint!r}: {exc}", "bad_endpoint") from None
        sock.send(encode(req))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(left * 1000) + 1))
            if not ready:
                break
            if monitor is not None and monitor in ready:
                monitor.recv_multipart()
                how = ("with the admin key in TRAINGUARD_KEYS_DIR (is admin.key in the daemon's keys/admins/, and "
                       "daemon.key the daemon's?)" if keys is not None else
                       "without a key (a tcp control endpoint of a secure daemon needs admin.key_secret and "
                       "daemon.key in TRAINGUARD_KEYS_DIR)")
                raise ClientError(f"refused: not authorised by the daemon at {endpoint} {how}", "not_authorised")
            if sock not in ready:
                continue
            try:
                reply = decode_reply(sock.recv())
            except ProtocolError as exc:
                raise ClientError(f"the daemon at {endpoint} answered garbage: {exc}", "bad_reply") from None
            if isinstance(reply, (CtlReply, StatusReply)) and reply.ref == req.id:
                return reply
        raise _NoReply()
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=0)


def status_pages(endpoint: str, timeout: float = 5.0, include_gone: bool = False) -> tuple[StatusPage, list[StatusNode]]:
    """The whole `status`, page after page (a reply holds a bounded number of nodes, so a
    10,000-node cluster never exceeds the reply limit): the first page, and the nodes of
    every page. Each page is validated as it is decoded (`decode_status_reply`)."""
    deadline = time.monotonic() + timeout
    offset: int | None = 0
    first: StatusPage | None = None
    nodes: list[StatusNode] = []
    while offset is not None:
        left = max(0.5, deadline - time.monotonic())
        page = request(endpoint, "status", {"offset": offset, "all": include_gone}, timeout=left,
                       decode_reply=decode_status_reply)
        if page is None:
            raise ClientError(f"the daemon at {endpoint} answered garbage: a status reply without a result",
                              "bad_reply")
        first = first or page
        nodes.extend(page.nodes)
        offset = page.page.next_offset
    assert first is not None
    return first, nodes


def status_document(first: StatusPage, nodes: list[StatusNode]) -> dict[str, Any]:
    """What `status --json` prints: the first page's parts with every page's nodes."""
    return {"schema": first.schema, "daemon": first.daemon, "summary": first.summary, "nodes": nodes,
            "jobs": first.jobs}


def status_all(endpoint: str, timeout: float = 5.0, include_gone: bool = False) -> dict[str, Any]:
    """The whole `status` as plain data (dicts, lists, strings and numbers)."""
    return msgspec.to_builtins(status_document(*status_pages(endpoint, timeout, include_gone)))

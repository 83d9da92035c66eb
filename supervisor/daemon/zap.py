"""The daemon's side of CurveZMQ: allow-lists of public keys, and its ZAP handler.

The ZAP handler runs on the daemon's own loop (no thread): each handshake asks it, it
answers from the allow-list of the socket's domain, and a refusal is an `auth.refused`
event with the peer's address. Key files themselves are `supervisor.shared.keys`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85

from supervisor.shared.keys import KeyError_, load_public

ZAP_VERSION = b"1.0"
AGENTS_DOMAIN = "agents"
ADMINS_DOMAIN = "admins"


class AllowList:
    """The public keys in a directory (*.key), reloaded when the directory changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[bytes, str] = {}  # public key -> file name, for logs
        self._fingerprint: tuple[tuple[str, float], ...] | None = None
        self.problems: list[str] = []

    def refresh(self) -> bool:
        """Reload if any file changed; True when the list was (re)loaded. A process out
        of descriptors (a connection flood) can neither list the directory nor open a
        key: that keeps the list in force and tries again next time, rather than reading
        as "no keys" and cutting every node off."""
        try:
            files = sorted(self.directory.glob("*.key"))
            fingerprint = tuple((f.name, f.stat().st_mtime) for f in files)
        except OSError as exc:
            if _out_of_descriptors(exc):
                return False
            files, fingerprint = [], ()
        if fingerprint == self._fingerprint:
            return False
        keys: dict[bytes, str] = {}
        problems = []
        for f in files:
            try:
                keys[load_public(f)] = f.name
            except KeyError_ as exc:
                if _out_of_descriptors(exc.__context__):
                    return False
                problems.append(str(exc))
        self._fingerprint = fingerprint
        self.keys, self.problems = keys, problems
        return True


def _out_of_descriptors(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


@dataclass(frozen=True)
class ZapDecision:
    request_id: bytes
    allowed: bool
    domain: str
    address: str
    mechanism: str
    key_name: str | None
    reason: str


def decide(frames: list[bytes], allow: dict[str, AllowList]) -> ZapDecision | None:
    """Answer one ZAP request (RFC 27) from the allow-list of its domain. Pure but for
    reading the lists. None for a request too malformed to answer."""
    if len(frames) < 6:
        return None
    version, request_id, domain_b, address_b, _identity, mechanism_b = frames[:6]
    credentials = frames[6:]
    domain = domain_b.decode(errors="replace")
    address = address_b.decode(errors="replace")
    mechanism = mechanism_b.decode(errors="replace")
    if version != ZAP_VERSION:
        return ZapDecision(request_id, False, domain, address, mechanism, None, "unsupported ZAP version")
    if mechanism != "CURVE" or not credentials or len(credentials[0]) != 32:
        return ZapDecision(request_id, False, domain, address, mechanism, None, f"{mechanism} is not accepted; use CURVE")
    allowed = allow.get(domain)
    if allowed is None:
        return ZapDecision(request_id, False, domain, address, mechanism, None, f"unknown ZAP domain {domain!r}")
    key = zmq.utils.z85.encode(credentials[0])
    name = allowed.keys.get(key)
    if name is None:
        return ZapDecision(request_id, False, domain, address, mechanism, None,
                           f"public key {key.decode()[:8]}… is not in {allowed.directory}")
    return ZapDecision(request_id, True, domain, address, mechanism, name, "ok")


def reply(decision: ZapDecision) -> list[bytes]:
    code, text = (b"200", b"OK") if decision.allowed else (b"400", decision.reason.encode()[:200])
    user = (decision.key_name or "").encode() if decision.allowed else b""
    return [ZAP_VERSION, decision.request_id, code, text, user, b""]

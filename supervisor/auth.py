"""CurveZMQ authentication: key files, the daemon's allow-lists, and its ZAP handler.

Layout of a keys directory (`trainguard keys generate DIR --name NAME` makes a pair):

    daemon.key  daemon.key_secret     the daemon's pair (the daemon host)
    agents/*.key                      agents admitted by the daemon (their public keys)
    admins/*.key                      admins admitted on a tcp control endpoint
    agent.key   agent.key_secret      a node's pair, plus daemon.key (a node)
    admin.key   admin.key_secret      an operator's pair, plus daemon.key (for tcp control)

Secret key files must not be readable by others (mode 0600 or 0640): a process refuses to
start with one that is. Secret keys are never logged. The ZAP handler runs on the
daemon's own loop (no thread): each handshake asks it, it answers from the allow-list,
and a refusal is an `auth.refused` event with the peer's address.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

ZAP_VERSION = b"1.0"
AGENTS_DOMAIN = "agents"
ADMINS_DOMAIN = "admins"


class KeyError_(Exception):
    """A key file problem, written for the operator (the name avoids the builtin)."""


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """A new CURVE key pair: NAME.key (public, 0644) and NAME.key_secret (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise KeyError_(f"{public} or {secret} already exists; refusing to overwrite a key")
    old = os.umask(0o077)
    try:
        public_path, secret_path = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    os.chmod(public_path, 0o644)
    os.chmod(secret_path, 0o600)
    return Path(public_path), Path(secret_path)


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read public key {path}: {exc}") from None
    return public


def load_pair(directory: Path, name: str) -> tuple[bytes, bytes]:
    """(public, secret) of NAME in DIR, after checking the secret file's permissions."""
    secret_path = directory / f"{name}.key_secret"
    try:
        mode = secret_path.stat().st_mode
    except FileNotFoundError:
        raise KeyError_(
            f"no {name} key in {directory}: create one with `trainguard keys generate {directory} --name {name}`"
        ) from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyError_(
            f"{secret_path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {secret_path}` — refusing to use a secret key others can read"
        )
    try:
        public, secret = zmq.auth.load_certificate(str(secret_path))
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read secret key {secret_path}: {exc}") from None
    if secret is None:
        raise KeyError_(f"{secret_path} holds no secret key")
    return public, secret


class AllowList:
    """The public keys in a directory (*.key), reloaded when the directory changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[bytes, str] = {}  # public key -> file name, for logs
        self._fingerprint: tuple[tuple[str, float], ...] | None = None
        self.problems: list[str] = []

    def refresh(self) -> bool:
        """Reload if any file changed; True when the list was (re)loaded."""
        try:
            files = sorted(self.directory.glob("*.key"))
            fingerprint = tuple((f.name, f.stat().st_mtime) for f in files)
        except OSError:
            files, fingerprint = [], ()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        keys: dict[bytes, str] = {}
        problems = []
        for f in files:
            try:
                keys[load_public(f)] = f.name
            except KeyError_ as exc:
                problems.append(str(exc))
        self.keys, self.problems = keys, problems
        return True


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

"""CurveZMQ key files: make a pair, read a public key, read a pair safely.

Layout of a keys directory (`trainguard keys generate DIR --name NAME` makes a pair):

    daemon.key  daemon.key_secret     the daemon's pair (the daemon host)
    agents/*.key                      agents admitted by the daemon (their public keys)
    admins/*.key                      admins admitted on a tcp control endpoint
    agent.key   agent.key_secret      a node's pair, plus daemon.key (a node)
    admin.key   admin.key_secret      an operator's pair, plus daemon.key (for tcp control)

Secret key files must not be readable by others (mode 0600 or 0640): a process refuses to
start with one that is. Secret keys are never logged. Shared by the daemon, the agents and
the CLI; the daemon's allow-lists and ZAP handler are in `supervisor.daemon.zap`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq.auth

from supervisor.shared.safefile import FileRefused, read_bounded


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


#: A key file is a few hundred bytes; a larger one is not a key file.
KEY_FILE_LIMIT = 64 * 1024


def load_public(path: Path) -> bytes:
    try:
        # The daemon reads allow-lists on its loop: a FIFO or device named *.key must be
        # refused without a blocking read (zmq's loader would just open it).
        read_bounded(path, KEY_FILE_LIMIT, "a public key file")
        public, _ = zmq.auth.load_certificate(str(path))
    except FileRefused as exc:
        raise KeyError_(f"cannot read public key {path}: {exc.reason}") from None
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

"""The sd_notify protocol: tell systemd we are ready, what we are doing, that the main
loop is alive (watchdog), and that we are stopping.

A datagram of `KEY=value` lines to the unix socket named by $NOTIFY_SOCKET (a path, or
`@name` for the abstract namespace). The watchdog interval comes from $WATCHDOG_USEC
(and only applies to us if $WATCHDOG_PID is unset or ours); we ping at half of it. Outside
systemd (no NOTIFY_SOCKET) every call is a cheap no-op. Nothing here raises: a service
must not die because its supervisor's socket went away.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, clock_pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self._address: str | None = None
        raw = env.get("NOTIFY_SOCKET") or ""
        if raw.startswith("@"):
            self._address = "\0" + raw[1:]  # abstract namespace
        elif raw.startswith("/"):
            self._address = raw
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        mine = clock_pid if clock_pid is not None else os.getpid()
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(mine)):
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._sock: socket.socket | None = None
        self._last_watchdog = float("-inf")
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        """Send STATUS= only when it changed (it shows in `systemctl status`)."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """Call once per main-loop turn that really did its work; pings at half the
        interval systemd asked for. `now` is monotonic time."""
        if self.watchdog_interval is not None and now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""Noticing policy file changes: watchdog's observer thread records which files were
touched; the daemon's loop takes them with `due(now)` once a file has been quiet for the
debounce time (editors write a file in several steps: truncate, write, rename from a temp
file). Loading happens on the daemon's thread (`supervisor.policy.directory`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from supervisor.policy.directory import is_policy_file


class DirectoryWatcher(FileSystemEventHandler):
    """Notes which policy files changed; hands them out once quiet for `debounce` s."""

    def __init__(self, directory: Path, debounce: float = 0.3) -> None:
        self.directory = directory
        self.debounce = debounce
        self._lock = threading.Lock()
        self._touched: dict[Path, float] = {}
        self._observer = Observer()
        self._observer.schedule(self, str(directory), recursive=False)

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    #: Events that can change a file's content. Not "opened" / "closed_no_write": our own
    #: reading of a file raises those, and reacting to them would reload it forever.
    CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})

    def on_any_event(self, event: FileSystemEvent) -> None:  # watchdog's thread
        if event.event_type not in self.CHANGES:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        now = time.monotonic()
        with self._lock:
            for raw in paths:
                if not raw:
                    continue
                path = Path(raw if isinstance(raw, str) else raw.decode())
                if path.parent == self.directory and is_policy_file(path):
                    self._touched[path] = now

    def due(self, now: float) -> list[Path]:
        """Files last touched at least `debounce` seconds before `now` (monotonic)."""
        with self._lock:
            ready = [p for p, t in self._touched.items() if now - t >= self.debounce]
            for p in ready:
                del self._touched[p]
        return sorted(ready)

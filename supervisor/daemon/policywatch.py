"""Noticing policy file changes: watchdog's observer thread records which files were
touched; the daemon's loop takes them with `due(now)` once a file has been quiet for the
debounce time (editors write a file in several steps: truncate, write, rename from a temp
file). `loaded(now)` goes one step further: due files are read and checked on one worker
thread (`supervisor.policy.directory.load_outcome`: bounded, never blocks on a FIFO) and
handed back in order, for the loop to swap in (`PolicyDirectory.apply`). So a large or
hostile file costs the loop nothing but a share of the interpreter while it is parsed.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from supervisor.policy.directory import Outcome, is_policy_file, load_outcome


class DirectoryWatcher(FileSystemEventHandler):
    """Notes which policy files changed; hands them out once quiet for `debounce` s."""

    def __init__(self, directory: Path, debounce: float = 0.3) -> None:
        self.directory = directory
        self.debounce = debounce
        self._lock = threading.Lock()
        self._touched: dict[Path, float] = {}
        self._observer = Observer()
        self._observer.schedule(self, str(directory), recursive=False)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-load")
        self._loading: list[tuple[Path, Future[Outcome]]] = []

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer.is_alive():  # a daemon closed before it ran never started it
            self._observer.stop()
            self._observer.join(timeout=5)
        self._loader.shutdown(wait=False, cancel_futures=True)

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

    def loaded(self, now: float) -> list[tuple[Path, Callable[[], Outcome]]]:
        """Start loading the files now due (on the worker thread) and return the loads
        that have finished, in the order they were started, each as a function that
        returns its outcome (or raises what the loader raised: a bug, for the loop to log)."""
        for path in self.due(now):
            self._loading.append((path, self._loader.submit(load_outcome, path)))
        done: list[tuple[Path, Callable[[], Outcome]]] = []
        while self._loading and self._loading[0][1].done():
            path, future = self._loading.pop(0)
            done.append((path, future.result))
        return done

"""ThreadConnections: one SQLite connection per thread and process (a forked or spawned worker opens its own),
all closed together by close(); write() is a short IMMEDIATE transaction."""
from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import suppress
from pathlib import Path


class ThreadConnections:
    def __init__(self, db_path: Path, busy_timeout_s: float):
        self.db_path = db_path
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's connection, closed together by close()
        self._opened_lock = threading.Lock()

    def connect_new(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a power cut may lose the last commits only
        conn.row_factory = sqlite3.Row
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._local.conn = self.connect_new()
            self._local.pid = os.getpid()
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection opened (in any thread); a later use opens a new one."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def write(self) -> "_Transaction":
        """A short IMMEDIATE transaction (takes the write lock at once, so read-then-write is atomic)."""
        return _Transaction(self.conn)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")

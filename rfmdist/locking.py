"""One writer per store: a lock beside it, held for the whole fit, that a crashed owner cannot keep.

A fit (or ``save``) with ``store=PATH`` creates ``PATH.lock`` before it looks at, moves or writes
anything at ``PATH`` (or ``PATH.partial``), and removes it when done. The lock is a small JSON file
(host, pid, start time, a token) created exclusively (``O_CREAT | O_EXCL`` on local file systems; on
fsspec URLs written only if absent and read back, which narrows but does not close the race of two
writers starting within a fraction of a second). The owner touches it every :data:`HEARTBEAT_S`
seconds from a helper thread.

A second writer is refused with the owner's identity, unless the lock is *stale*:

- same host, and no process with the owner's pid is running (the owner was killed or crashed);
- or, from another host (where the pid cannot be checked), no heartbeat for :data:`STALE_AFTER_S`.

A stale lock is taken over (with a log line), so a crash never blocks a resume for longer than that.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rfmdist.exceptions import StoreError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
HEARTBEAT_S = 30.0
# A lock from another host without a heartbeat for this long is stale (10 missed heartbeats).
STALE_AFTER_S = 300.0


class StoreLockedError(StoreError):
    """Another fit is writing the store (its lock is held and not stale)."""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has that pid
        return True
    return True


@dataclass
class StoreLock:
    """The lock of the store at ``url`` (a local path or an fsspec URL), as a context manager.

    Parameters
    ----------
    url : str
        The store's location (:func:`rfmdist.store.store_location`); the lock is ``url + ".lock"``.
    """

    url: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        """Where the lock file lives."""
        return self.url + LOCK_SUFFIX

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        return fsspec.core.url_to_fs(self.path)

    def owner(self) -> dict[str, Any] | None:
        """The lock's content and age (``age_s`` since the last heartbeat), or None if unlocked."""
        try:
            if self.is_local:
                with open(self.path) as fh:
                    content = json.load(fh)
                age = time.time() - os.stat(self.path).st_mtime
            else:
                fs, path = self._fs()
                content = json.loads(fs.cat_file(path))
                age = time.time() - float(content.get("heartbeat", content.get("started", 0)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable: a lock half written by a killed owner
            return {"host": "?", "pid": -1, "started": 0, "age_s": float("inf")}
        return content | {"age_s": age}

    def is_stale(self, owner: dict[str, Any]) -> bool:
        """True when the owner is gone (see the module docstring)."""
        if owner.get("host") == socket.gethostname() and int(owner.get("pid", -1)) > 0:
            return not _pid_running(int(owner["pid"]))
        return float(owner.get("age_s", 0.0)) > STALE_AFTER_S

    def _content(self) -> str:
        now = time.time()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": now,
                "heartbeat": now,
                "token": self.token,
            }
        )

    def _create(self) -> bool:
        """Create the lock if absent; True when this process now holds it."""
        if self.is_local:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(self._content())
            return True
        fs, path = self._fs()
        if fs.exists(path):
            return False
        fs.pipe_file(path, self._content().encode())
        time.sleep(0.05)
        return (self.owner() or {}).get("token") == self.token

    def acquire(self) -> StoreLock:
        """Take the lock, taking over a stale one.

        Raises
        ------
        StoreLockedError
            Another live fit holds it.
        """
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return self
            owner = self.owner()
            if owner is None:
                continue  # released meanwhile
            if not self.is_stale(owner):
                raise StoreLockedError(
                    f"Expected no other fit writing the store at {self.url!r}, found one running "
                    f"(host {owner.get('host')}, pid {owner.get('pid')}, started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('started', 0)))}"
                    f"; lock file {self.path}); wait for it to finish or stop it: a fit whose "
                    f"process is gone, or whose lock has no heartbeat for {STALE_AFTER_S:g} s, is "
                    "taken over by the next fit or --resume."
                )
            logger.warning(
                "taking over the stale lock %s (host %s, pid %s, last heartbeat %.0f s ago): its "
                "fit is gone",
                self.path,
                owner.get("host"),
                owner.get("pid"),
                owner.get("age_s", float("inf")),
            )
            self._remove()
        raise StoreLockedError(
            f"Expected to take the lock {self.path} of the store at {self.url!r}, found it taken "
            "again at every try; another fit is starting on the same store: run one at a time."
        )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="rfmdist-store-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if self.is_local:
                    os.utime(self.path)
                else:
                    content = json.loads(self._fs()[0].cat_file(self._fs()[1]))
                    content["heartbeat"] = time.time()
                    self._fs()[0].pipe_file(self._fs()[1], json.dumps(content).encode())
            except (OSError, ValueError) as err:
                logger.warning("could not refresh the store lock %s: %s", self.path, err)

    def _remove(self) -> None:
        try:
            if self.is_local:
                os.remove(self.path)
            else:
                fs, path = self._fs()
                fs.rm(path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if this process still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        owner = self.owner()
        if owner is not None and owner.get("token") == self.token:
            self._remove()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

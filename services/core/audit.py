"""Append-only, hash-chained audit log (JSON lines), shared by every process of the data dir.

Each line carries `prev` (the sha256 of the previous line's bytes) and the chain starts from GENESIS, so an
edited, removed or reordered line breaks verification. Appends hold an exclusive flock, so several
processes can write one file; the last line's hash is cached with the file size and re-read only when
another process appended since. `python -m services.core.audit verify [path]` checks a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

GENESIS = "0" * 64
_TAIL_CHUNK = 64 * 1024


def _sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(fd: int, size: int) -> bytes:
    """The last complete line of a file, read backwards in chunks (lines end with a newline)."""
    end, buf = size, b""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut >= 0:
            return buf[cut + 1 :]
    return buf


class AuditLog:
    """Writes audit events; `append` returns only after the line is in the file (write(2) done)."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()
        self._cached: tuple[int, str] = (-1, GENESIS)  # (file size, hash of the last line)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)

    def append(self, event: dict[str, Any]) -> str:
        """Appends one event (timestamp added when absent) and returns its line's sha256."""
        record = {"ts": event.get("ts") or _now(), **event}
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                return self._append_locked(record)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _append_locked(self, record: dict[str, Any]) -> str:
        size = os.fstat(self._fd).st_size
        prev = self._cached[1] if self._cached[0] == size else self._tail_hash(size)
        line = orjson.dumps({**record, "prev": prev}) + b"\n"
        os.write(self._fd, line)
        if self._fsync:
            os.fsync(self._fd)
        digest = _sha256(line)
        self._cached = (size + len(line), digest)
        return digest

    def _tail_hash(self, size: int) -> str:
        return _sha256(_last_line(self._fd, size)) if size else GENESIS

    def close(self) -> None:
        os.close(self._fd)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    lines: int
    bad_line: int = 0  # 1-based line number of the first break
    reason: str = ""


def verify_chain(path: Path) -> Verdict:
    """Checks every line's `prev` against the previous line's sha256."""
    prev, count = GENESIS, 0
    with path.open("rb") as fh:
        for count, line in enumerate(fh, start=1):
            if not line.endswith(b"\n"):
                return Verdict(False, count, count, "truncated line")
            try:
                claimed = orjson.loads(line).get("prev")
            except orjson.JSONDecodeError:
                return Verdict(False, count, count, "not JSON")
            if claimed != prev:
                return Verdict(False, count, count, "chain broken: prev does not match the line before")
            prev = _sha256(line)
    return Verdict(True, count)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "verify":
        print("usage: python -m services.core.audit verify [path]", file=sys.stderr)
        return 2
    from services.core.config import load_settings

    path = Path(argv[1]) if len(argv) > 1 else load_settings("edge").process.audit_path
    if not path.exists():
        print(f"{path}: no audit log", file=sys.stderr)
        return 1
    verdict = verify_chain(path)
    if verdict.ok:
        print(f"{path}: OK, {verdict.lines} events, chain intact")
        return 0
    print(f"{path}: TAMPERED at line {verdict.bad_line}: {verdict.reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

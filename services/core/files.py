"""Files a service makes once and shares with its replicas: keys and secrets in the data dir."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def create_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's bytes; when absent, writes make() there (mode 0600) atomically, first writer wins."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(make())
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)  # fails when another process got there first: then its file is the one
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    return path.read_bytes()

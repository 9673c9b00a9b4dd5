import multiprocessing
import stat
from pathlib import Path

from services.core.files import create_once


def _make(path: Path, value: bytes, out) -> None:
    out.put(create_once(path, lambda: value))


def test_first_writer_wins_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "key"
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_make, args=(path, f"value-{i}".encode(), results)) for i in range(6)]
    for p in procs:
        p.start()
    seen = {results.get(timeout=10) for _ in procs}
    for p in procs:
        p.join()
    assert len(seen) == 1  # every process got the same bytes: the one file that won
    assert path.read_bytes() in seen
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temporary files left


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"in use")
    assert create_once(path, lambda: b"new") == b"in use"

import multiprocessing
from pathlib import Path

import orjson

from services.core.audit import GENESIS, AuditLog, main, verify_chain


def _write(path: Path, n: int, who: str) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append({"action": "test", "actor": who, "i": i})
    log.close()


def test_chain_links_every_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 5, "a")
    lines = path.read_bytes().splitlines(keepends=True)
    assert orjson.loads(lines[0])["prev"] == GENESIS
    assert len(lines) == 5
    verdict = verify_chain(path)
    assert verdict.ok and verdict.lines == 5


def test_two_writers_and_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write, args=(path, 200, f"p{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    verdict = verify_chain(path)
    assert verdict.ok, verdict
    assert verdict.lines == 600


def test_tampered_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 4, "a")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"actor":"a"', b'"actor":"mallory"')
    path.write_bytes(b"".join(lines))
    verdict = verify_chain(path)
    assert not verdict.ok
    assert verdict.bad_line == 3  # line 2 changed, so line 3's prev no longer matches


def test_removed_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 4, "a")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    assert not verify_chain(path).ok


def test_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 2, "a")
    _write(path, 2, "b")
    assert verify_chain(path).ok


def test_verify_command_exit_codes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "audit.log"
    _write(path, 3, "a")
    assert main(["verify", str(path)]) == 0
    path.write_bytes(path.read_bytes().replace(b'"i":1', b'"i":7'))
    assert main(["verify", str(path)]) == 1
    assert "TAMPERED" in capsys.readouterr().err
    assert main(["bogus"]) == 2

"""What the deployment files must agree with: the variables services/core/config.py really reads."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from services.core import config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
# Read by the image itself (Dockerfile CMD and infra/healthcheck.py), not by config.py.
IMAGE_VARIABLES = frozenset({"LAUNCHPAD_SERVICE"})


class _RecordingEnviron(dict[str, str]):
    """os.environ stand-in that remembers every name looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


class _OsWithEnviron:
    """The os module as config.py sees it, with the recording environ in place of the real one."""

    def __init__(self, environ: _RecordingEnviron) -> None:
        self.environ = environ

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _read_by_config() -> frozenset[str]:
    recorder = _RecordingEnviron()
    with mock.patch.object(config, "os", _OsWithEnviron(recorder)):
        for service in ("edge", *config.SERVICES):
            config.load_settings(service)
    return frozenset(recorder.read)


def settings_from(environ: Mapping[str, str], service: str) -> config.Settings:
    """What config.py makes of exactly this environment for `service` (nothing of the real one is seen)."""
    recorder = _RecordingEnviron()
    recorder.update(environ)
    with mock.patch.object(config, "os", _OsWithEnviron(recorder)):
        return config.load_settings(service)


@pytest.fixture(scope="session")
def config_variables() -> Iterator[frozenset[str]]:
    names = _read_by_config()
    # The recorder must see the variables we know exist, or it recorded nothing useful.
    assert {"POSTGRES_DSN", "LAUNCHPAD_DATA_ADDR", "LAUNCHPAD_EDGE_PORT", "COSIGN_PASSWORD"} <= names
    yield names

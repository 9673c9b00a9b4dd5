"""JSON logs, one object per line, to reports/logs/<service>.log and stderr.

Every line carries the service and the current request id, so the logs service can find a request's lines.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import orjson

from services.core.context import current_request_id, current_tenant

_STD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_SET = frozenset({"request_id", "tenant"})  # fields the entry already has


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "") or current_request_id(),
            # the logs service scopes lines by it; `extra={"tenant": ...}` names it after the call context ended
            "tenant": getattr(record, "tenant", "") or current_tenant(),
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and k not in _SET})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(service: str, log_dir: Path, level: int = logging.INFO) -> logging.Logger:
    """Routes the root logger to the service's JSON log file and stderr; returns the service logger."""
    log_dir.mkdir(parents=True, exist_ok=True)
    formatter = JsonFormatter(service)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (logging.FileHandler(log_dir / f"{service}.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(f"launchpad.{service}")

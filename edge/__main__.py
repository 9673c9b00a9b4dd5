"""The edge (port 8001): `python -m edge`. One uvicorn worker on uvloop + httptools, access log off."""

from __future__ import annotations

import logging
import re

import uvicorn

from edge.app import create_app
from services.core.config import load_settings
from services.core.jsonlog import setup_logging

_TOKEN_PARAM = re.compile(r"(?<=[?&]token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """uvicorn logs every accepted WebSocket with its query string, which carries the JWT (?token=...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_PARAM.sub("***", a) if isinstance(a, str) else a for a in record.args)
        return True


def main() -> None:
    settings = load_settings("edge")
    setup_logging("edge", settings.log_dir)
    logging.getLogger("uvicorn.error").addFilter(RedactTokens())
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,  # keep the JSON logging set up above
        workers=1,
        ws_max_size=settings.max_body_bytes,
        lifespan="on",
    )


if __name__ == "__main__":
    main()

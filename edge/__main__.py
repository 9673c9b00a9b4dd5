"""The edge (port 8001): `python -m edge`. One uvicorn worker on uvloop + httptools, access log off."""

from __future__ import annotations

import gc
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
    setup_logging("edge", settings.process.log_dir)
    logging.getLogger("uvicorn.error").addFilter(RedactTokens())
    app = create_app(settings)
    # Everything built so far lives as long as the process: keep it out of the cyclic GC's full passes, which
    # otherwise walk it all and stall the event loop (tens of ms at the p99 of the realtime fan-out bench).
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.process.host,
        port=settings.process.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,  # keep the JSON logging set up above
        workers=1,
        ws_max_size=settings.edge.max_body_bytes,
        # No permessage-deflate (Centrifugo's and Phoenix's default too): compressing every frame once per
        # socket was a quarter of the edge's CPU in the realtime fan-out bench, for small JSON frames.
        ws_per_message_deflate=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()

"""The edge (port 8001): `python -m edge`. One uvicorn worker on uvloop + httptools, access log off."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import sys

import uvicorn

from edge.app import create_app
from services.core.config import Settings, load_settings
from services.core.jsonlog import setup_logging

_TOKEN_PARAM = re.compile(r"(?<=[?&]token=)[^&\s\"]+")
_STARTUP_FAILURE = 3  # uvicorn's exit code when the server did not start


class RedactTokens(logging.Filter):
    """uvicorn logs every accepted WebSocket with its query string, which carries the JWT (?token=...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_PARAM.sub("***", a) if isinstance(a, str) else a for a in record.args)
        return True


def edge_config(settings: Settings) -> uvicorn.Config:
    """The edge's app and uvicorn settings (logging must be set up before: uvicorn's own config is off)."""
    logging.getLogger("uvicorn.error").addFilter(RedactTokens())
    app = create_app(settings)
    return uvicorn.Config(
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


def main() -> None:
    settings = load_settings("edge")
    setup_logging("edge", settings.process.log_dir)
    server = uvicorn.Server(edge_config(settings))
    # Everything built so far lives as long as the process: keep it out of the cyclic GC's full passes, which
    # otherwise walk it all and stall the event loop (tens of ms at the p99 of the realtime fan-out bench).
    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(_STARTUP_FAILURE)


if __name__ == "__main__":
    main()

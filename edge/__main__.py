"""The edge (port 8001): `python -m edge`. One uvicorn worker on uvloop + httptools, access log off."""

from __future__ import annotations

import uvicorn

from edge.app import create_app
from services.core.config import load_settings
from services.core.jsonlog import setup_logging


def main() -> None:
    settings = load_settings("edge")
    setup_logging("edge", settings.log_dir)
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

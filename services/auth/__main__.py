"""The auth service (port 8012): `python -m services.auth`."""

from services.auth.app import build
from services.core.server import run_service

if __name__ == "__main__":
    run_service("auth", build)

"""The runtime-deploy service (port 8014): `python -m services.deploy`."""

from services.core.server import run_service
from services.deploy.app import build

if __name__ == "__main__":
    run_service("deploy", build)

"""`python -m services.logs`: the logs service (LogsService on 8018)."""

from services.core.server import run_service
from services.logs.servicer import build

if __name__ == "__main__":
    run_service("logs", build)

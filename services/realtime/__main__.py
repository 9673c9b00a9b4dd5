"""`python -m services.realtime`: the realtime bridge (RealtimeService on 8015)."""

from services.core.server import run_service
from services.realtime.app import build

if __name__ == "__main__":
    run_service("realtime", build)

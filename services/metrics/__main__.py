"""`python -m services.metrics`: the metrics proxy (MetricsService on 8016)."""

from services.core.server import run_service
from services.metrics.servicer import build

if __name__ == "__main__":
    run_service("metrics", build)

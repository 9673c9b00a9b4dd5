"""`python -m services.data`: the data service (DataService on 8011)."""

from services.core.server import run_service
from services.data.servicer import build

if __name__ == "__main__":
    run_service("data", build)

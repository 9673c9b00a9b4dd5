"""`python -m services.storage`: the storage service (StorageService on 8013)."""

from services.core.server import run_service
from services.storage.servicer import build

if __name__ == "__main__":
    run_service("storage", build)

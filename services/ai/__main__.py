"""`python -m services.ai`: the AI SQL assistant (AiService on 8017)."""

from services.ai.servicer import build
from services.core.server import run_service

if __name__ == "__main__":
    run_service("ai", build)

"""The REST/WebSocket edge: routes derived from the contracts, translated to gRPC calls (see edge/app.py)."""

"""The realtime bridge service (port 8015): per-tenant topics, history and recovery, heartbeats."""

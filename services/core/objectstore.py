"""Which object store this process uses: live S3 or the embedded folder of buckets (DESIGN section 4)."""

from __future__ import annotations

from services.core.config import Settings
from services.core.deps import Mode, Registry, keep_live
from services.core.folderstore import FolderStore
from services.core.objects import ObjectStore
from services.core.s3store import S3Store

REMEDIATION = "set MINIO_ENDPOINT, MINIO_ACCESS_KEY and MINIO_SECRET_KEY to an S3 server that answers"


async def open_object_store(settings: Settings, deps: Registry) -> ObjectStore:
    """Live S3 when configured and answering; SIMULATION_MODE=false keeps a silent S3 (unhealthy, calls
    UNAVAILABLE) rather than writing objects to the data dir; auto mode falls back and says so."""
    configured = bool(
        settings.storage.endpoint and settings.storage.access_key and settings.storage.secret_key
    )
    live = S3Store(settings) if configured and settings.process.simulation_mode is not True else None
    mode, live = await keep_live(
        deps, "objects", settings.process.simulation_mode, live, target=settings.storage.endpoint,
        detail="S3 (minio SDK)", unanswered="S3 not answering (SIMULATION_MODE=false: no fallback)",
        timeout_s=10,
    )  # fmt: skip
    if live is not None:
        return live
    store = FolderStore(settings.process.data_dir / "buckets", mode)
    await store._pool.run(store.sweep)
    detail = "S3 not answering at start-up" if mode is Mode.FALLBACK else "folder of buckets in the data dir"
    deps.add("objects", mode, str(store.root), detail=detail, remediation=REMEDIATION, check=store.ping)
    return store

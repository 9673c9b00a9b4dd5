"""Which contracts the edge serves: every generated launchpad.<svc>.v1 module in generated/."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from google.protobuf.descriptor import ServiceDescriptor


def contract_modules() -> list[ModuleType]:
    """Imports every generated launchpad/<svc>/v1/*_pb2 module (registering its descriptors)."""
    import launchpad

    names = {  # a set: the same folder may be on sys.path twice (relative and absolute)
        ".".join(("launchpad", path.parent.parent.name, "v1", path.stem))
        for root in launchpad.__path__
        for path in Path(root).glob("*/v1/*_pb2.py")
    }
    return [importlib.import_module(name) for name in sorted(names)]


def contract_services() -> list[ServiceDescriptor]:
    return [svc for module in contract_modules() for svc in module.DESCRIPTOR.services_by_name.values()]


def service_name(service: ServiceDescriptor) -> str:
    """Which backend serves a contract: package launchpad.<name>.v1 -> "<name>"."""
    parts = service.full_name.split(".")
    if len(parts) < 4 or parts[0] != "launchpad":
        raise ValueError(f"{service.full_name} is not a launchpad.<service>.v1 contract")
    return parts[1]

"""The release every process reports (StatusService, OpenAPI); the same number as pyproject.toml's."""

VERSION = "0.1.0"

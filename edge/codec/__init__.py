"""JSON <-> protobuf with grpc-gateway's defaults: `encode` (proto -> JSON), `decode` (JSON body, path and
query text -> proto), and what both share in `common`. Callers use `from edge import codec`."""

from edge.codec.common import (
    WRAPPERS,
    CodecError,
    Decoder,
    Encoder,
    TextSetter,
    is_json_unwrap,
    message_class,
)
from edge.codec.decode import decoder, field_setter, parse_json, text_leaves, text_setter
from edge.codec.encode import encoder, field_encoder

__all__ = [
    "WRAPPERS",
    "CodecError",
    "Decoder",
    "Encoder",
    "TextSetter",
    "decoder",
    "encoder",
    "field_encoder",
    "field_setter",
    "is_json_unwrap",
    "message_class",
    "parse_json",
    "text_leaves",
    "text_setter",
]

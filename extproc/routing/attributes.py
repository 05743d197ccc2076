"""Envoy's request/response attributes, read in one place: the chosen host's tier and model
(`xds.upstream_host_metadata`, the endpoint metadata `cascade render envoy` writes), its address,
the cluster and the status.
"""

from __future__ import annotations

import functools
import logging

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import json_format, struct_pb2, text_format

logger = logging.getLogger(__name__)

#: Key of Envoy's attribute Struct in `ProcessingRequest.attributes`.
ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
HOST_METADATA = "xds.upstream_host_metadata"
UPSTREAM_ADDRESS = "upstream.address"
RESPONSE_CODE = "response.code"
CLUSTER_NAME = "xds.cluster_name"
#: What `cascade render envoy` asks Envoy to send with the first response message.
RESPONSE_ATTRIBUTES = (RESPONSE_CODE, CLUSTER_NAME, HOST_METADATA, UPSTREAM_ADDRESS)
#: Namespace of the endpoint metadata written by the renderer.
NAMESPACE = "cascade"


@functools.lru_cache(maxsize=512)
def parse_host_metadata(text: str) -> tuple[str, str]:
    """(tier, model) from the text-format `config.core.v3.Metadata` Envoy sends; "" if absent."""
    if not text or text == "NULL":
        return "", ""
    metadata = base_pb2.Metadata()
    try:
        text_format.Parse(text, metadata)
    except text_format.ParseError:
        logger.warning("unparsable upstream host metadata: %.200s", text)
        return "", ""
    return _from_struct(metadata.filter_metadata.get(NAMESPACE))


def _from_struct(struct: struct_pb2.Struct | None) -> tuple[str, str]:
    if struct is None:
        return "", ""
    fields = struct.fields
    tier = fields["tier"].string_value if "tier" in fields else ""
    model = fields["model"].string_value if "model" in fields else ""
    return tier, model


def host_of(request: pb.ProcessingRequest) -> tuple[str, str, str]:
    """(tier, model, address) of the chosen host, from the first message's attributes."""
    if ATTRIBUTES_KEY not in request.attributes:
        return "", "", ""
    fields = request.attributes[ATTRIBUTES_KEY].fields
    address = fields[UPSTREAM_ADDRESS].string_value if UPSTREAM_ADDRESS in fields else ""
    if HOST_METADATA not in fields:
        return "", "", address
    value = fields[HOST_METADATA]
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        tier, model = parse_host_metadata(value.string_value)
    elif kind == "struct_value":  # a structured form, should Envoy ever send one
        metadata = base_pb2.Metadata()
        json_format.ParseDict(json_format.MessageToDict(value.struct_value), metadata)
        tier, model = _from_struct(metadata.filter_metadata.get(NAMESPACE))
    else:
        tier, model = "", ""
    return tier, model, address


def read_response_attributes(request: pb.ProcessingRequest) -> tuple[int, str, str, str, str]:
    """(status, cluster, served tier, model, upstream address) from the first response message;
    0 and "" where Envoy sent nothing."""
    if ATTRIBUTES_KEY not in request.attributes:
        return 0, "", "", "", ""
    fields = request.attributes[ATTRIBUTES_KEY].fields
    status = int(fields[RESPONSE_CODE].number_value) if RESPONSE_CODE in fields else 0
    cluster = fields[CLUSTER_NAME].string_value if CLUSTER_NAME in fields else ""
    tier, model, address = host_of(request)
    return status, cluster, tier, model, address

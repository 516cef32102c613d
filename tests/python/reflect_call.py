"""An independent client: discovers a CIM gRPC service through server reflection (no generated
code from this repository) and calls it.

usage: reflect_call.py HOST:PORT TENANT_ID
Prints one JSON line with what it saw; exits non-zero on any failure.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main() -> int:
    target, tenant = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)

    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("cim.graph.v1.GraphService")

    def call(method_name: str, body: dict) -> dict:
        method = service.FindMethodByName(method_name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        stub = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        request = json_format.ParseDict(body, request_cls())
        response = stub(request, metadata=[("x-cim-tenant", tenant)], timeout=10)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    created = call("CreateGraph", {"name": "from python", "properties": {"lang": "python"}})
    graph_id = created["graph_id"]
    call("AddNode", {"graph_id": graph_id, "node": {"id": "py", "type": "client"}})
    graph = call("GetGraph", {"graph_id": graph_id})

    # A bad request gets a clean status in the standard rich error model (google.rpc.Status
    # with ErrorInfo and BadRequest details), decoded the way any grpcio user decodes it.
    details = {}
    try:
        call("GetGraph", {"graph_id": "not-a-uuid"})
        bad = "no error"
    except grpc.RpcError as e:  # noqa: PERF203
        bad = e.code().name
        status = rpc_status.from_call(e)
        details["message"] = status.message if status else None
        for any_detail in status.details if status else []:
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                details["reason"], details["domain"] = info.reason, info.domain
                details["code"] = info.metadata.get("code")
            elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                any_detail.Unpack(request)
                details["fields"] = [v.field for v in request.field_violations]

    print(json.dumps({
        "services": services,
        "methods": [m.name for m in service.methods],
        "graph": graph,
        "bad_request": bad,
        "bad_request_details": details,
    }))
    ok = (
        "cim.graph.v1.GraphService" in services
        and "grpc.health.v1.Health" in services
        and graph.get("node_count") == "1"
        and graph.get("name") == "from python"
        and bad == "INVALID_ARGUMENT"
        and details.get("reason") == "INVALID_ARGUMENT"
        and details.get("code") == "invalid_argument"
        and details.get("fields") == ["graph_id"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

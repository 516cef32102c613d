"""An independent client: discovers a CIM gRPC service through server reflection (no generated
code from this repository) and calls it.

usage: reflect_call.py HOST:PORT TENANT_ID
Prints one JSON line with what it saw; exits non-zero on any failure.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
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

    # A bad request gets a clean status, not a crash.
    try:
        call("GetGraph", {"graph_id": "not-a-uuid"})
        bad = "no error"
    except grpc.RpcError as e:  # noqa: PERF203
        bad = e.code().name

    print(json.dumps({
        "services": services,
        "methods": [m.name for m in service.methods],
        "graph": graph,
        "bad_request": bad,
    }))
    ok = (
        "cim.graph.v1.GraphService" in services
        and "grpc.health.v1.Health" in services
        and graph.get("node_count") == "1"
        and graph.get("name") == "from python"
        and bad == "INVALID_ARGUMENT"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""KServe V2's gRPC service, ``inference.GRPCInferenceService`` (the Open Inference Protocol that KServe's and
Triton's stock clients call): ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer.
The health probes (ServerLive, ServerReady) need no token, as on REST."""

from __future__ import annotations

from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

import workbench
from workbench.serving.protocol import v2_grpc as proto
from workbench.serving.transport.grpc.calls import Calls, rpc, unimplemented

PROTOCOL = "v2-grpc"  # the protocol label of these calls in metrics
ANSWERED = "ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer"


@unimplemented(service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], ANSWERED)
class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, calls: Calls):
        self.calls = calls

    @rpc(open_=True)
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @rpc(open_=True)
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.calls.repo.ready.is_set())

    @rpc()
    async def ModelReady(self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        state = self.calls.repo.state(request.name)
        version = proto.model_version(request.version)
        ready = (version if version is not None else state.live()) in state.available()
        return service_pb2.ModelReadyResponse(ready=ready)

    @rpc()
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerMetadataResponse(name="workbench", version=workbench.__version__)

    @rpc()
    async def ModelMetadata(self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        state = self.calls.repo.state(request.name)
        servable = state.pick(proto.model_version(request.version), None)
        return proto.encode_metadata(request.name, state.available(), servable.framework, servable.signature)

    @rpc()
    async def ModelInfer(self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        name, version = request.model_name, proto.model_version(request.model_version)
        return await self.calls.predict(
            name,
            version,
            None,
            PROTOCOL,
            lambda signature: _decoded(proto.decode_infer(request, signature)),
            lambda s, outputs, decoded: proto.encode_infer(name, s.version, outputs, s.signature, decoded),
        )


def _decoded(request: Any) -> tuple[dict[str, Any], Any]:
    """The decoded request's inputs, and the request itself for the encoder (outputs asked for, id)."""
    return request.inputs, request


def register(server: grpc.aio.Server, calls: Calls) -> str:
    """Add the service to ``server``; returns its name."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(calls), server)
    return "KServe V2 GRPCInferenceService"

"""TensorFlow Serving's gRPC services: ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
``tensorflow.serving.ModelService`` (GetModelStatus), from ``tensorflow-serving-api``'s generated code.
Importing this module imports TensorFlow (its protos are TensorFlow's); :mod:`.server` leaves these services
out, and says why, when that fails."""

from __future__ import annotations

from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from workbench.serving.protocol import tfserving_grpc as proto
from workbench.serving.transport.grpc.calls import Calls, rpc, unimplemented

PROTOCOL = "grpc"  # the protocol label of these calls in metrics


@unimplemented(prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"], "Predict and GetModelMetadata")
class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, calls: Calls):
        self.calls = calls

    @rpc()
    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> Any:
        name, version, label = proto.model_ref(request.model_spec)
        return await self.calls.predict(
            name,
            version,
            label,
            PROTOCOL,
            lambda signature: proto.decode_predict(request, signature),
            lambda s, outputs, wanted: proto.encode_predict(name, s.version, outputs, s.signature, wanted),
        )

    @rpc()
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        name, version, label = proto.model_ref(request.model_spec)
        servable = self.calls.repo.resolve(name, version, label)
        return proto.encode_metadata(name, servable.version, servable.signature, request.metadata_field)


@unimplemented(model_service_pb2.DESCRIPTOR.services_by_name["ModelService"], "GetModelStatus")
class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, calls: Calls):
        self.calls = calls

    @rpc()
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        name, version, label = proto.model_ref(request.model_spec)
        state = self.calls.repo.state(name)
        if label is not None:
            version = state.pick(None, label).version
        return proto.encode_status(state.status(version))


def register(server: grpc.aio.Server, calls: Calls) -> str:
    """Add both services to ``server``; returns their names."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(calls), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(calls), server)
    return "TF Serving PredictionService and ModelService"

"""The model server's gRPC transport (grpcio's asyncio server, on a thread and event loop of its own).

- :mod:`.server`: :class:`GRPCServer`, which binds one port and serves every service below on it
- :mod:`.calls`: what every call shares: the token, the error table, a predict through the repository
- :mod:`.tfserving`: TensorFlow Serving's ``PredictionService`` and ``ModelService``
- :mod:`.v2`: KServe V2's ``inference.GRPCInferenceService``
"""

from workbench.serving.transport.grpc.server import GRPCServer

__all__ = ["GRPCServer"]

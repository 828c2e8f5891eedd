"""How requests reach the models: the HTTP app (:mod:`.http`, ASGI, served by uvicorn) and the gRPC server
(:mod:`.grpc`, grpcio). Both decode with :mod:`workbench.serving.protocol` and run on
:class:`workbench.serving.model.repository.ModelRepository`."""

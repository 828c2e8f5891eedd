"""The model layer: signatures, framework runtimes, the repository of loaded versions, and batching."""

"""The local backend: each replica a detached process on this machine."""

"""gguf-server's library: the continuous-batching scheduler and the ASGI app (``create_app``)."""

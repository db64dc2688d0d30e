"""gguf-server as a Ray Serve deployment: N replicas, each loading the model once, behind Ray's
HTTP proxy.

    serve run gguf_engine.server.ray_serve:app_builder model=smollm2-135m-instruct replicas=2 parallel=4

or from Python: ``serve.run(deployment(ServerSettings(...), num_replicas=2))``.  Each replica runs
the same ASGI app as gguf-server (``create_app``, built on the replica by Serve), with its own
engine thread, slots and prompt cache; every response names its replica in the
``x-gguf-replica`` header.  Needs the ``ray`` extra: ``pip install "gguf-engine[ray]"``.
"""
from __future__ import annotations

import os
from typing import Any

from ray import serve

from .app import ServerSettings, create_app

REPLICA_HEADER = b"x-gguf-replica"


class ReplicaTag:
    """ASGI middleware: adds the replica's id (its process and Serve replica id) to every response."""

    def __init__(self, app, tag: str):
        self.app, self.tag = app, tag.encode("latin-1")

    async def __call__(self, scope, receive, send):
        async def tagged(msg):
            if msg["type"] == "http.response.start":
                msg = dict(msg, headers=list(msg.get("headers", [])) + [(REPLICA_HEADER, self.tag)])
            await send(msg)
        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


def _replica_id() -> str:
    try:
        return f"{serve.get_replica_context().replica_id.unique_id}-{os.getpid()}"
    except Exception:            # outside a replica
        return str(os.getpid())


def deployment(settings: ServerSettings, num_replicas: int = 2, **options: Any):
    """The bound Serve application: num_replicas replicas of gguf-server's app.  options go to
    ``serve.deployment`` (e.g. ray_actor_options={"num_cpus": 2})."""
    def build():
        app = create_app(settings, wait_ready=True)      # a replica takes requests once its model is loaded
        app.add_middleware(ReplicaTag, tag=_replica_id())
        return app

    cls = serve.ingress(build)()
    return serve.deployment(cls, name="gguf-server", num_replicas=num_replicas, **options).bind()


def app_builder(args: dict[str, str]):
    """For ``serve run gguf_engine.server.ray_serve:app_builder key=value ...``: model, replicas,
    parallel, ctx_size, threads, api_key, alias, chat_template, metrics (true/false)."""
    known = {"model", "replicas", "parallel", "ctx_size", "threads", "api_key", "alias", "chat_template", "metrics"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; known: {sorted(known)}")
    threads = int(args.get("threads", 1))
    settings = ServerSettings(model=args.get("model"), n_parallel=int(args.get("parallel", 4)),
                              n_ctx=int(args.get("ctx_size", 4096)), n_threads=threads,
                              api_keys=[k for k in args.get("api_key", "").split(",") if k],
                              alias=args.get("alias"), chat_template=args.get("chat_template"),
                              metrics=str(args.get("metrics", "false")).lower() in ("1", "true", "yes"))
    return deployment(settings, num_replicas=int(args.get("replicas", 2)),
                      ray_actor_options={"num_cpus": threads})

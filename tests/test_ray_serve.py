"""gguf-server on Ray Serve: a local single-node Ray with 2 replicas behind Serve's HTTP proxy.

8 concurrent chat requests must all succeed and be spread over both replicas (each response
names its replica in the x-gguf-replica header).  Ray failing to start fails the test (no skip).
"""
from __future__ import annotations

import os
import socket
import threading

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_replicas_share_eight_requests(smollm2_path):
    """2 replicas (one slot context of 256 tokens x 4 slots each), 8 concurrent requests."""
    import ray
    from ray import serve

    from gguf_engine.server.app import ServerSettings
    from gguf_engine.server.ray_serve import REPLICA_HEADER, deployment

    env = {k: os.environ[k] for k in ("NUMBA_CACHE_DIR", "GGUF_ENGINE_MODELS") if k in os.environ}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServerSettings(model=str(smollm2_path), n_parallel=4, n_ctx=1024, n_threads=1)
        serve.run(deployment(settings, num_replicas=2, ray_actor_options={"num_cpus": 0.5}),
                  route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=300) as c:
            for _ in range(600):                      # both replicas load the model
                try:
                    if c.get(url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                threading.Event().wait(0.5)
        replicas, errors = [], []

        def ask(i: int) -> None:
            try:
                r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
                    "messages": [{"role": "user", "content": f"Say the number {i}."}], "max_tokens": 4,
                    "temperature": 0})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"]
                replicas.append(r.headers[REPLICA_HEADER.decode()])
            except Exception as e:                    # reported below
                errors.append(repr(e))

        # requests in two waves of 8 until both replicas have answered (the router spreads load
        # by queue length, so a first wave can land on one replica while the other is still idle)
        for _ in range(3):
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert not errors, errors
            if len(set(replicas)) == 2:
                break
        assert len(set(replicas)) == 2, replicas
    finally:
        serve.shutdown()
        ray.shutdown()

"""The health-check node port servers of `kdns proxy` (kdns/proxyapp.py HealthCheckServers):
real HTTP listeners that open and close as Services come and go, answering as kube-proxy's."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import trio

from kdns.proxyapp import HealthCheckServers
from tests.builders import model_endpoint, model_service
from tests.e2e.conftest import free_port

from .builders import NODE, routes


def get(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_ports_open_answer_and_close() -> None:
    port = free_port()
    lb = dict(type="LoadBalancer", external_traffic_policy="Local", health_check_node_port=port)
    ports = (("p80", "TCP", 80, 30080),)
    s = model_service("ns/lb", ports=ports, **lb)
    healthy = [True]
    servers = HealthCheckServers(lambda: healthy[0])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(servers.run)
            servers.update(
                routes((s, [model_endpoint("10.244.1.5", node=NODE), model_endpoint("10.244.2.5")]))
            )
            await trio.sleep(0.2)
            status, body = await trio.to_thread.run_sync(get, port)
            assert status == 200
            assert body == {
                "service": {"namespace": "ns", "name": "lb"},
                "localEndpoints": 1,
                "serviceProxyHealthy": True,
            }
            # No local endpoint left: 503, so the load balancer skips this node.
            servers.update(routes((s, [model_endpoint("10.244.2.5")])))
            status, body = await trio.to_thread.run_sync(get, port)
            assert (status, body["localEndpoints"]) == (503, 0)
            # An unhealthy proxy is unhealthy for every Service.
            servers.update(routes((s, [model_endpoint("10.244.1.5", node=NODE)])))
            healthy[0] = False
            status, body = await trio.to_thread.run_sync(get, port)
            assert (status, body["serviceProxyHealthy"]) == (503, False)
            # The Service goes: the port closes.
            servers.update(())
            await trio.sleep(0.2)
            try:
                await trio.to_thread.run_sync(get, port)
            except urllib.error.URLError as e:
                assert isinstance(e.reason, ConnectionRefusedError)
            else:
                raise AssertionError("the port is still open")
            nursery.cancel_scope.cancel()

    trio.run(main)

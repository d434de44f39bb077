"""pytest fixtures for the fake kube-apiserver: a started ``ApiServer`` and its kubeconfig file.

Use from any test module with ``from tests.kubeapi.fixtures import kube_api, kubeconfig`` (or
``pytest_plugins = ["tests.kubeapi.fixtures"]``). ``kube_api`` is function-scoped, starts with
the "default" namespace, sends bookmarks every 0.2 s, and is stopped after the test; faults
are cleared first so that hung watches are released.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubeapi import objects
from tests.kubeapi.server import ApiServer


@pytest.fixture
def kube_api() -> Iterator[ApiServer]:
    server = ApiServer(bookmark_interval=0.2)
    server.create("namespaces", objects.namespace("default"))
    with server:
        yield server
        server.faults.clear()


@pytest.fixture
def kubeconfig(kube_api: ApiServer, tmp_path: Path) -> Path:
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig")

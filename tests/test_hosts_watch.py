"""The hosts plugin's file, watched by the running app (kdns/app.py `_hosts_watcher`): as
CoreDNS's hosts `reload`, a change of the file is served without a config reload, every
`hosts.reload` seconds, and a file that goes away leaves the inline lines only."""

from __future__ import annotations

from pathlib import Path

import trio

from kdns.config import Config
from tests.dns.test_forward import WAIT, ask, kdns_app, texts


async def answers_become(port: int, name: str, wanted: set[str]) -> None:
    """Ask until the answer is `wanted` (the watcher reads the file every `hosts.reload`)."""
    with trio.fail_after(WAIT):
        while texts(await ask(port, name)) != wanted:
            await trio.sleep(0.05)


async def test_a_changed_hosts_file_is_served_without_a_reload(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.7 printer.lan\n")
    config = Config().with_overrides(
        **{
            "hosts.file": str(hosts),
            "hosts.entries": ["192.0.2.9 inline.lan"],
            "hosts.reload": 0.1,
        }
    )
    async with kdns_app(config) as running:
        first = texts(await ask(running.port, "printer.lan"))
        hosts.write_text("192.0.2.8 printer.lan\n192.0.2.10 scanner.lan\n")
        await answers_become(running.port, "printer.lan", {"192.0.2.8"})
        scanner = texts(await ask(running.port, "scanner.lan"))
        hosts.unlink()  # CoreDNS empties the file's map; the inline lines stay
        await answers_become(running.port, "scanner.lan", set())
        inline = texts(await ask(running.port, "inline.lan"))
    assert first == {"192.0.2.7"}
    assert scanner == {"192.0.2.10"}
    assert inline == {"192.0.2.9"}

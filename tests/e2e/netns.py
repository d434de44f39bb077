"""Test hosts in network namespaces: a "node" and a "pod" joined by a veth pair.

Used by the glibc and autopath tests. Everything created is registered with the caller's
ExitStack before it is created, so it is removed even when a later step fails.
"""

from __future__ import annotations

import contextlib
import subprocess


def ip_command(ip: str, *args: str) -> None:
    # Generous: creating a namespace waits for the kernel to finish tearing down earlier ones,
    # which takes seconds on a busy machine.
    result = subprocess.run([ip, *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def node_and_pod(ip: str, node: str, pod: str, cleanup: contextlib.ExitStack) -> None:
    """Namespaces `node` and `pod`, each with loopback up and an `eth0` joined to the other's."""
    # Deleting a namespace deletes the veth end inside it (and so the pair).
    cleanup.callback(subprocess.run, [ip, "netns", "del", node], capture_output=True)
    ip_command(ip, "netns", "add", node)
    cleanup.callback(subprocess.run, [ip, "netns", "del", pod], capture_output=True)
    ip_command(ip, "netns", "add", pod)
    # Created inside the node namespace with its peer inside the pod namespace: the pair never
    # appears in the host's namespace, so the names cannot collide with anything.
    ip_command(
        ip, "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", pod
    )
    for ns in (node, pod):
        ip_command(ip, "-n", ns, "link", "set", "lo", "up")

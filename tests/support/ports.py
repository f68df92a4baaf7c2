"""Loopback ports: one free to listen on, and one where nothing listens."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now (the OS may give it out again later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def closed_port_url() -> str:
    """A /v1 base URL where a connect is refused."""
    return f"http://127.0.0.1:{free_port()}/v1"

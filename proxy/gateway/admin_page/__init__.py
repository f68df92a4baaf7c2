"""The admin page: one HTML document with its stylesheet and script inlined, so that it
fetches nothing from anywhere. Its Content-Security-Policy allows exactly those two (by
their hashes) and calls to seamline itself: no other script, style, frame or form
target, even one an account's name or an upstream's error message tried to smuggle in
(the script puts every value in as text, never as HTML).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    headers: dict[str, str]


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


@cache
def page() -> Page:
    """The page and its headers, read from the package once."""
    root = files(__name__)
    html = (root / "index.html").read_text("utf-8")
    style = (root / "admin.css").read_text("utf-8")
    script = (root / "admin.js").read_text("utf-8")
    csp = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_hash(script)}",
            f"style-src {_hash(style)}",
            "connect-src 'self'",
            "img-src data:",  # the empty favicon, so the browser asks for none
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    body = html.replace("@STYLE@", style, 1).replace("@SCRIPT@", script, 1)
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    return Page(body.encode(), headers)

"""How upstreams are reached: directly, or through an HTTP proxy (pure: no I/O).

An account's own ``proxy`` wins; without one, the environment decides as curl, Python's
requests and urllib do: ``https_proxy``/``HTTPS_PROXY`` for https upstreams,
``http_proxy``/``HTTP_PROXY`` for http ones (the lowercase name decides when it is set,
even to nothing), except for the hosts ``no_proxy``/``NO_PROXY`` names. No host is exempt
unless NO_PROXY says so, loopback included. Only plain-HTTP proxies are spoken to
(https upstreams go through a CONNECT tunnel); SOCKS and https:// proxies are refused.
Imports nothing else of seamline: config.py validates with it.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

DIRECT: Literal["direct"] = "direct"  # an account's ``proxy`` that opts out of any proxy
FORM = "http://[user:password@]host:port"


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """An HTTP proxy: where it listens and, if it wants them, the credentials.

    Shown (``str``, ``repr``, ``label``) without its credentials, so that no message
    or log line made from it can hold the password. As a pool key, two accounts with
    the same proxy but different credentials keep their connections apart.
    """

    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    # "Basic ...": what goes in Proxy-Authorization, or "" without credentials.
    authorization: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        auth = ""
        if self.username or self.password:
            pair = f"{self.username}:{self.password}".encode()
            auth = "Basic " + base64.b64encode(pair).decode("ascii")
        object.__setattr__(self, "authorization", auth)

    @property
    def label(self) -> str:
        """``host:port``, the way messages name the proxy."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"http://{self.label}"

    def secrets(self) -> list[str]:
        """What must never be logged: the password, as given and as sent."""
        return [s for s in (self.password, self.authorization.removeprefix("Basic ")) if s]


def parse_proxy(text: str, *, schemeless: bool = False) -> ProxyURL:
    """``http://[user:password@]host:port`` -> ProxyURL; ValueError says what is wrong
    without quoting the text (it may hold a password). ``schemeless``: ``host:port``
    means http:// (as curl and requests read the environment's)."""
    text = text.strip()
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"expected {FORM}, got text with spaces or control characters")
    if "://" not in text:
        if not schemeless:
            raise ValueError(f"expected {FORM}, got no scheme")
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"expected {FORM}, got a URL with an invalid port") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        if scheme in ("https", "socks4", "socks4a", "socks5", "socks5h", "socks"):
            raise ValueError(
                f"{scheme}:// proxies are not supported: give an HTTP proxy ({FORM});"
                " https upstreams go through it in a CONNECT tunnel"
            )
        raise ValueError(f"expected {FORM}, got a {scheme} URL")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"expected {FORM}, got no host")
    if port is None:
        # curl would use 1080, Python's requests 80: better said than guessed.
        raise ValueError(f"expected {FORM}: the proxy's port is missing")
    if not 0 < port < 65536:
        raise ValueError(f"expected {FORM}, got port {port}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"expected {FORM}, got a path, query or fragment after the port")
    return ProxyURL(host, port, unquote(parts.username or ""), unquote(parts.password or ""))


# -- NO_PROXY ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoProxy:
    """The hosts NO_PROXY sends direct: ``*`` (all), a name and its subdomains
    (``example.com``, ``.example.com`` and ``*.example.com`` alike), an IP address or
    network (``10.0.0.0/8``, ``::1``, ``[::1]``), each optionally with ``:port``."""

    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None], ...] = ()

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.strip("[]").rstrip(".").lower()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            for name, only in self.names:
                if (only is None or only == port) and (host == name or host.endswith("." + name)):
                    return True
            return False
        return any(
            (only is None or only == port) and address.version == net.version and address in net
            for net, only in self.networks
        )


def parse_no_proxy(text: str) -> NoProxy:
    """Entries separated by commas (or spaces); empty ones are ignored, as curl does."""
    names: list[tuple[str, int | None]] = []
    networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
    for raw in text.replace(",", " ").split():
        entry = raw.lower()
        if entry == "*":
            return NoProxy(everything=True)
        host, port = _split_port(entry)
        try:
            networks.append((ipaddress.ip_network(host, strict=False), port))
            continue
        except ValueError:
            pass
        host = host.removeprefix("*.").lstrip(".").rstrip(".")
        if host:
            names.append((host, port))
    return NoProxy(False, tuple(names), tuple(networks))


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``[v6]`` or a bare IPv6 address (which keeps its
    colons: ``::1`` has no port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


# -- the environment --------------------------------------------------------------------

_VARIABLES = {"http": ("http_proxy", "HTTP_PROXY"), "https": ("https_proxy", "HTTPS_PROXY")}
_NO_PROXY = ("no_proxy", "NO_PROXY")


@dataclass(frozen=True, slots=True)
class EnvProxies:
    """The proxies the environment names, per upstream scheme, and NO_PROXY."""

    http: ProxyURL | None = None
    https: ProxyURL | None = None
    no_proxy: NoProxy = NoProxy()
    # The variable each proxy came from, for messages: {"https": "HTTPS_PROXY"}.
    sources: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.http is not None or self.https is not None

    def pick(self, scheme: str, host: str, port: int) -> ProxyURL | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.no_proxy.matches(host, port):
            return None
        return proxy


def from_env(env: Mapping[str, str]) -> EnvProxies:
    """The environment's proxies; ValueError names the variable that is wrong."""
    found: dict[str, ProxyURL] = {}
    sources: dict[str, str] = {}
    for scheme, names in _VARIABLES.items():
        name = next((n for n in names if n in env), None)
        value = env[name].strip() if name is not None else ""
        if name is None or not value:
            continue  # an empty http_proxy means none, as in curl and urllib
        try:
            found[scheme] = parse_proxy(value, schemeless=True)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}: {exc}") from None
        sources[scheme] = name
    no_proxy = next((env[n] for n in _NO_PROXY if n in env), "")
    return EnvProxies(found.get("http"), found.get("https"), parse_no_proxy(no_proxy), sources)


# -- an account's way out ---------------------------------------------------------------

Setting = ProxyURL | Literal["direct"] | None  # an account's ``proxy``; None: the environment


def route(setting: Setting, env: EnvProxies, url: str) -> ProxyURL | None:
    """The proxy a call to ``url`` goes through, or None for direct: the account's own
    setting wins; without one, the environment's (NO_PROXY applies to it only)."""
    if setting == DIRECT:
        return None
    if setting is not None:
        return setting
    if not env:
        return None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return env.pick(parts.scheme, parts.hostname or "", port)


def describe(setting: Setting, env: EnvProxies, url: str) -> str:
    """How calls to ``url`` go out, for /admin/accounts: never a credential."""
    if setting == DIRECT:
        return 'direct (proxy = "direct")'
    if isinstance(setting, ProxyURL):
        return str(setting)
    if not url:
        return "from the environment" if env else "direct"
    proxy = route(None, env, url)
    scheme = urlsplit(url).scheme
    if proxy is not None:
        return f"{proxy} (from {env.sources.get(scheme, 'the environment')})"
    named = env.https if scheme == "https" else env.http
    return "direct (NO_PROXY)" if named is not None else "direct"

"""The route table: what seamline knows of each path it serves, in one place.

The handlers are bound in ``app.py``; everything else (the metrics label, whether a
route is a completion with its ending checks and usage chunk, whether its body must
name a model, its circuit-breaker scope, whether a request of it is logged) is read
from here, so no module keeps a list of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    """One served path (``/v1/...`` routes by their part after ``/v1/``)."""

    label: str  # the metrics label and what the summary line calls it
    methods: tuple[str, ...] = ("GET", "POST")
    completion: bool = False  # chat or text completions: OpenAI profile, ending checks
    needs_model: bool = False  # its JSON body must name a model
    scope: str = "other"  # the breaker scope: failures here leave other routes alone
    quiet: bool = False  # no summary line (load balancers' probes, scrapes)


# The operator's endpoints. HEAD as well as GET where load balancers probe.
HEALTHZ = Route("/healthz", ("GET", "HEAD"), quiet=True)
READYZ = Route("/readyz", ("GET", "HEAD"), quiet=True)
METRICS = Route("/metrics", ("GET",), quiet=True)
ADMIN_ACCOUNTS = Route("/admin/accounts", ("GET",))
OPS = {r.label: r for r in (HEALTHZ, READYZ, METRICS, ADMIN_ACCOUNTS)}

# The Responses front, served from chat accounts: its upstream route is chat's.
RESPONSES = Route("/v1/responses", ("POST",), needs_model=True, scope="chat")
STORED_RESPONSE = Route("/v1/responses/{id}", ("GET", "DELETE"), scope="responses")
# The Anthropic Messages front, served from chat accounts.
MESSAGES = Route("/v1/messages", ("POST",), needs_model=True, scope="chat")
COUNT_TOKENS = Route("/v1/messages/count_tokens", ("POST",), needs_model=True, scope="chat")

# The API under /v1, by the path after it.
_API = {
    "chat/completions": Route(
        "/v1/chat/completions", completion=True, needs_model=True, scope="chat"
    ),
    "completions": Route("/v1/completions", completion=True, needs_model=True, scope="completions"),
    "embeddings": Route("/v1/embeddings", needs_model=True, scope="embeddings"),
    "models": Route("/v1/models", scope="models"),
    "responses": RESPONSES,
    "messages": MESSAGES,
    "messages/count_tokens": COUNT_TOKENS,
}
# Other API families: their own breaker scope each, under one metrics label. Only
# these: a client's made-up paths must not grow the pool's state or the metrics.
_FAMILIES = frozenset(
    {
        "chat", "completions", "embeddings", "responses", "messages", "models", "files",
        "audio", "images", "moderations", "batches", "fine_tuning", "assistants", "threads",
        "vector_stores", "uploads", "rerank", "tokenize",
    }
)  # fmt: skip
_OTHER = {family: Route("/v1/other", scope=family) for family in _FAMILIES}
_UNKNOWN = Route("/v1/other")
NOT_SERVED = Route("other", ())  # a path seamline does not serve


def api_route(path: str) -> Route:
    """The route of a ``path`` after ``/v1/``."""
    known = _API.get(path)
    if known is not None:
        return known
    return _OTHER.get(path.split("/", 1)[0], _UNKNOWN)


def route_of(path: str) -> Route:
    """The route of any request path."""
    if path.startswith("/v1/"):
        return api_route(path[4:])
    return OPS.get(path, NOT_SERVED)

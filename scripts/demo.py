"""See the point of seamline in seconds: a broken upstream, streamed directly and through it.

Starts the fake upstream (scripts/fake_upstream.py), which answers each request with one
of the ways real providers break the OpenAI stream contract (scripts/broken_upstreams.py,
which the end-to-end tests play too), starts seamline in front of it, then streams the
same request with the openai client directly and through seamline, and prints what each
yields.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap

import fake_upstream
import openai
from broken_upstreams import ANSWER, SCENARIOS

from proxy import config as cfg
from proxy.gateway.app import start


async def run(base_url: str, scenario: str) -> str:
    """Stream one request whose upstream breaks as ``scenario`` does; what the SDK made of it."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0, timeout=10)
    text = ""
    try:
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"bench": {"broken": scenario}},
        )
        async for ch in stream:
            if ch.choices:
                text += ch.choices[0].delta.content or ""
        return f"ok: {text!r}"
    except Exception as exc:  # the point is to show what the SDK raises
        kind = type(exc).__name__
        return f"{kind}: {str(exc).splitlines()[0][:100]}" + (f" after {text!r}" if text else "")
    finally:
        await client.close()


async def compare() -> list[tuple[str, str, str, str]]:
    """Each scenario: (name, what the upstream does, direct result, result through seamline)."""
    server = await fake_upstream.serve()
    upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    conf = cfg.parse(
        f'[server]\nheartbeat_s = 0\n[state]\npath = ":memory:"\n'
        f'[[accounts]]\nname = "simulated"\nbase_url = "{upstream}"\n',
        "demo",
        {},
    )
    proxy_runner = await start(conf, "127.0.0.1", 0)
    proxied = f"http://127.0.0.1:{proxy_runner.addresses[0][1]}/v1"
    try:
        return [
            (name, s.what, await run(upstream, name), await run(proxied, name))
            for name, s in SCENARIOS.items()
        ]
    finally:
        await proxy_runner.cleanup()
        server.close()
        await server.wait_closed()


async def main() -> None:
    results = await compare()
    width = max(60, shutil.get_terminal_size().columns) // 2 - 2
    print(f"\nExpected answer: {ANSWER!r}\n")
    print(f"{'DIRECT (openai SDK -> upstream)':<{width}}  THROUGH SEAMLINE")
    print(f"{'-' * (width - 1):<{width}}  {'-' * (width - 1)}")
    for name, what, direct, through in results:
        print(f"\n[{name}] upstream sends {what}")
        left = textwrap.wrap(direct, width) or [""]
        right = textwrap.wrap(through, width) or [""]
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            print(f"{a:<{width}}  {b}")
    print(
        "\nThrough seamline every stream parses; a truncated one ends in an explicit error "
        "instead of passing for a complete answer.\n"
    )


def _quiet_logs() -> None:
    import io

    from proxy.logs import configure

    configure(json_lines=True, stream=io.StringIO())


if __name__ == "__main__":
    _quiet_logs()
    asyncio.run(main())

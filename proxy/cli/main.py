"""Command line: seamline serve | check-config | accounts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from proxy import __version__
from proxy.config import AccountConfig, Config, ConfigError, load
from proxy.config.egress import describe
from proxy.gateway.runtime import SPARE_FILES
from proxy.logs import configure, get_logger

EXIT_CONFIG = 2


def _port(text: str) -> int:
    """A TCP port for --port; out of range must not wrap around to another port."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seamline",
        description="An OpenAI-compatible reverse proxy that repairs upstream event streams "
        "and rotates requests across upstream accounts.",
        epilog="commands: 'seamline serve' runs the proxy; 'seamline check-config PATH' "
        "validates a config file; 'seamline accounts status' prints each account's "
        "persisted state; 'seamline accounts login NAME' logs a qwen-oauth account in. "
        "'seamline COMMAND --help' tells more of each.",
    )
    p.add_argument("--version", action="version", version=f"seamline {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default="config.toml", help="TOML config file")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=_port, help="listen port (overrides server.port)")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path")
    accounts = sub.add_parser("accounts", help="inspect accounts (status) or log one in (login)")
    asub = accounts.add_subparsers(dest="action", required=True)
    status = asub.add_parser("status", help="print each account's persisted state")
    status.add_argument("--config", default="config.toml", help="TOML config file")
    login = asub.add_parser("login", help="OAuth device-code login for a qwen-oauth account")
    login.add_argument("name", help="the account's name in the config")
    login.add_argument("--config", default="config.toml", help="TOML config file")
    return p


def _load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"seamline: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; each stream holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


async def _serve(config: Config, host: str | None, port: int | None) -> None:
    from proxy.gateway.app import drain, start  # late: check-config needs none of it
    from proxy.gateway.runtime import reload

    log = get_logger("seamline")
    # Handlers go in before anything is announced: a supervisor may send SIGTERM as soon
    # as it reads the listening line, and that must still be a clean shutdown.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await start(config, host, port)
    app = runner.app
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(app.runtime, config.path))
    for addr in runner.addresses:
        h, p = addr[0], addr[1]
        h = f"[{h}]" if ":" in h else h  # an IPv6 address needs brackets in a URL
        print(f"seamline listening on http://{h}:{p}/v1", file=sys.stderr, flush=True)
    shown = ", ".join(_shown(config, a) for a in config.accounts)
    print("accounts: " + shown, file=sys.stderr, flush=True)
    if not config.server.api_keys:
        log.warning("no_client_auth", detail="server.api_keys is empty: any client may use it")
    try:
        await stop.wait()
        # A second SIGTERM/SIGINT cuts the drain short: the streams still open get their
        # error event now instead of at the deadline.
        hurry = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, hurry.set)
        await drain(runner, hurry=hurry)
    finally:
        await runner.cleanup()


def _shown(config: Config, account: AccountConfig) -> str:
    """An account's name, and the proxy its calls go through when they go through one."""
    how = describe(account.proxy, config.env_proxies, account.base_url)
    return account.name if how.startswith("direct") else f"{account.name} (through {how})"


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        config = _load_or_exit(args.path)
        print(f"{args.path}: ok ({len(config.accounts)} account(s))")
        return 0
    if args.command == "accounts":
        from proxy.cli.accounts import login, print_status

        config = _load_or_exit(args.config)
        if args.action == "status":
            print_status(config)
            return 0
        return asyncio.run(login(config, args.name))
    configure()
    config = _load_or_exit(args.config)
    files = raise_open_file_limit()
    wanted = config.server.max_concurrent  # None: derived from the limit, so it fits
    if wanted and files < (need := 2 * wanted + SPARE_FILES):
        get_logger("seamline").warning(
            "open_file_limit_low",
            limit=files,
            needed=need,
            detail="each stream holds two sockets: raise the hard limit (ulimit -Hn) "
            "or lower server.max_concurrent",
        )
    try:
        _run(_serve(config, args.host, args.port))
    except OSError as exc:
        print(f"seamline: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

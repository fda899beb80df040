"""`wiresnake proxy [-c] CONFIG [-i ADDR] [-s] [-n] [-d] [-v]`: wireproxy's command line.

Reads a wireproxy configuration, brings the rootless tunnel and its front ends up, and runs
until SIGINT, SIGTERM or SIGQUIT (or, when a `[STDIOTunnel]` is all it serves, until
stdin and the connection are done). `-i ADDR` serves /readyz and /metrics, `-s` logs only
errors, `-n` checks the configuration (Endpoint names included) and exits, `-d` runs in
the background, LOG_LEVEL=debug logs more. No privilege is needed unless a port below
1024 is. Errors in the file are reported as FILE:LINE: message, with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from wiresnake import __version__
from wiresnake.config import EndpointSpec
from wiresnake.proxy import logrepeat
from wiresnake.proxy.app import ProxyApp, StartError
from wiresnake.proxy.config import (
    ProxyConfigError,
    find_default_config,
    read_proxy_config,
)
from wiresnake.proxy.limits import raise_nofile_limit
from wiresnake.reresolve import stale_after_from_env

__all__ = ["main"]

log = logging.getLogger("wiresnake.proxy")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wiresnake proxy",
        description="Userspace WireGuard client for proxying (wireproxy's configuration format)",
    )
    p.add_argument("config", nargs="?", help="path of the configuration file")
    p.add_argument("-c", "--config", dest="config_opt", metavar="CONFIG", help="the same")
    p.add_argument("-i", "--info", metavar="ADDR", help="serve /readyz and /metrics on ADDR")
    p.add_argument("-s", "--silent", action="store_true", help="log errors only")
    p.add_argument("-n", "--configtest", action="store_true", help="check the file and exit")
    p.add_argument("-d", "--daemon", action="store_true", help="run in the background")
    p.add_argument("-v", "--version", action="store_true", help="print the version")
    return p


def _daemonize(argv: Sequence[str]) -> int:
    """Start the same command without -d in its own session, output discarded, as
    wireproxy's -d does; the caller returns at once."""
    rest = [a for a in argv if a not in ("-d", "--daemon")]
    try:
        subprocess.Popen(
            [sys.executable, "-m", "wiresnake", "proxy", *rest],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as e:
        print(f"cannot start in the background: {e}", file=sys.stderr)
        return 1
    return 0


def _info_address(text: str) -> EndpointSpec:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"-i {text}: expected HOST:PORT")
    return EndpointSpec(host.strip("[]"), int(port))


async def _run(app: ProxyApp) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(sig, stop.set)
    # a signal while starting (say, Endpoint look-ups retrying) stops the start too
    starting = asyncio.create_task(app.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting  # app.start() closes what it had opened
        print("interrupted while starting", file=sys.stderr)
        return 130
    try:
        starting.result()
    except StartError as e:
        log.error("%s", e)
        return 1
    for b in app.bound:
        if b.what.endswith("Tunnel"):
            continue  # the forwards log their own line, with the target
        log.info("%s listening on %s port %d", b.what, b.host, b.port)
    log.info("tunnel up on UDP port %d", app.tunnel.listen_port if app.tunnel else 0)
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(app.done.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await app.close()
    return app.exit_status


def main(argv: Sequence[str]) -> int:
    """`argv` starts after the word `proxy`."""
    args = _parser().parse_args(list(argv))
    if args.version:
        print(f"wiresnake proxy, version {__version__}")
        return 0
    level = logging.INFO
    if os.environ.get("LOG_LEVEL", "").lower() in ("debug", "verbose"):
        level = logging.DEBUG
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(
        level=logging.ERROR if args.silent else level,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # a flood (EMFILE on each accept, say) logs a line per interval; only on the handler
    # made here: one the embedding program (or pytest) set up is left as it is
    logrepeat.install([h for h in root.handlers if h not in before])
    path = args.config_opt or args.config or find_default_config()
    if path is None:
        print("configuration path is required", file=sys.stderr)
        return 1
    try:
        config = read_proxy_config(path)
        info = _info_address(args.info) if args.info else None
    except (ProxyConfigError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    for warning in config.warnings:
        log.warning("%s", warning)
    try:
        stale_after_from_env(os.environ)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    if args.configtest:
        try:  # Endpoint names must resolve, as in wireproxy
            asyncio.run(config.lookup_endpoints())
        except ProxyConfigError as e:
            print(e, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted while resolving Endpoint names", file=sys.stderr)
            return 130
        print("Config OK")
        return 0
    if args.daemon:
        return _daemonize(argv)
    raise_nofile_limit()  # each client connection holds a descriptor
    try:
        app = ProxyApp(config, info=info)
    except ProxyConfigError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        return asyncio.run(_run(app))
    except ProxyConfigError as e:  # an Endpoint name that does not resolve
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()

"""The `push-relay` command: run the relay, check a config, or start the sandbox."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from push_relay import __version__, config, logs
from push_relay.errors import ConfigError
from push_relay.server import ListenAddressError, parse_listen

DEFAULT_LISTEN = "127.0.0.1:3000"
DEFAULT_CONFIG = "config.toml"
EXIT_CONFIG = 2

log = logging.getLogger("push_relay")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: $LOG_LEVEL or info)",
    )
    parser.add_argument(
        "--log-format", default="text", choices=logs.LOG_FORMATS, help="log line format"
    )


def _parsers() -> dict[str, argparse.ArgumentParser]:
    run = argparse.ArgumentParser(
        prog="push-relay",
        description="Relay push requests to APNs, FCM, HMS and the Threema Gateway.",
        epilog="Other commands: 'push-relay check-config -c FILE', 'push-relay sandbox'.",
    )
    run.add_argument("-V", "--version", action="version", version=f"push-relay {__version__}")
    run.add_argument(
        "-l",
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="IP:PORT",
        help=f"address to listen on (default: {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"config file (default: {DEFAULT_CONFIG})",
    )
    _common(run)

    check = argparse.ArgumentParser(
        prog="push-relay check-config",
        description="Validate a config file as start-up would, and summarize it.",
    )
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="PATH")
    _common(check)

    sandbox = argparse.ArgumentParser(
        prog="push-relay sandbox",
        description="Run the relay against simulated push services, with credentials generated "
        "on the fly, and print ready-to-paste curl commands.",
    )
    sandbox.add_argument("-l", "--listen", default=DEFAULT_LISTEN, metavar="IP:PORT")
    _common(sandbox)
    return {"run": run, "check-config": check, "sandbox": sandbox}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parsers = _parsers()
    command = "run"
    if args_list and args_list[0] in ("check-config", "sandbox"):
        command = args_list.pop(0)
    args = parsers[command].parse_args(args_list)
    logs.setup(args.log_level, args.log_format)

    if command == "sandbox":
        from push_relay.sandbox import run_sandbox

        return _with_listen(args.listen, run_sandbox)

    try:
        cfg = config.load(args.config)
    except ConfigError as err:
        print(f"push-relay: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in cfg.warnings:
        log.warning("%s", warning)

    if command == "check-config":
        print(summarize(cfg))
        return 0

    from push_relay.server import serve

    return _with_listen(args.listen, lambda host, port: serve(cfg, host, port))


def _with_listen(listen: str, start: object) -> int:
    try:
        host, port = parse_listen(listen)
    except ListenAddressError as err:
        print(f"push-relay: {err}", file=sys.stderr)
        return EXIT_CONFIG
    assert callable(start)
    result: int = start(host, port)
    return result


def summarize(cfg: config.Config) -> str:
    """A short human summary of a valid config, for `check-config`."""
    lines = [f"{cfg.path}: OK"]
    if cfg.fcm:
        lines.append(
            f"  fcm: project {cfg.fcm.project_id}, {cfg.fcm.max_retries} retries, "
            f"account {cfg.fcm.service_account.client_email}"
        )
    if cfg.apns:
        lines.append(f"  apns: key {cfg.apns.key_id}, team {cfg.apns.team_id}")
    for app_id, hms in cfg.hms.items():
        priority = "high" if hms.high_priority else "normal"
        lines.append(f"  hms: app {app_id}, client {hms.client_id}, {priority} priority")
    if cfg.threema_gateway:
        lines.append(
            f"  threema_gateway: {cfg.threema_gateway.identity} via {cfg.threema_gateway.base_url}"
        )
    if cfg.influxdb:
        lines.append(f"  influxdb: {cfg.influxdb.connection_string} db {cfg.influxdb.db}")
    if len(lines) == 1:
        lines.append("  no push backend configured: every push will fail with 400")
    lines.extend(f"  warning: {w}" for w in cfg.warnings)
    return "\n".join(lines)

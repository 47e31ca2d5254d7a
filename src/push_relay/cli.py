"""The `push-relay` command: run the relay, check a config, reload a running relay, or start
the sandbox."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# nothing here may import prometheus-client (metrics): with --workers N its multiprocess
# directory must be set first
from push_relay import __version__, config, logs, reload
from push_relay.address import ListenAddressError, overlaps, parse_listen
from push_relay.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:3000"
DEFAULT_CONFIG = "config.toml"
EXIT_CONFIG = 2
LOG_LEVELS = ("debug", "info", "warning", "error")

log = logging.getLogger("push_relay")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "info").lower(),
        choices=LOG_LEVELS,
        help="log verbosity (default: $LOG_LEVEL or info)",
    )
    parser.add_argument(
        "--log-format", default="text", choices=logs.LOG_FORMATS, help="log line format"
    )


def _parsers() -> dict[str, argparse.ArgumentParser]:
    run = argparse.ArgumentParser(
        prog="push-relay",
        description="Relay push requests to APNs, FCM, HMS and the Threema Gateway.",
        epilog="Other commands: 'push-relay check-config -c FILE', "
        "'push-relay reload --pid-file FILE', 'push-relay sandbox'. "
        "SIGHUP reloads the config; SIGTERM drains and exits.",
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
    run.add_argument(
        "-w",
        "--workers",
        default=1,
        type=_worker_count,
        metavar="N",
        help="worker processes sharing the port (default: 1)",
    )
    run.add_argument(
        "--pid-file",
        metavar="PATH",
        help="write the relay's process id here (for 'push-relay reload'); removed at exit",
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

    reload_cmd = argparse.ArgumentParser(
        prog="push-relay reload",
        description="Have a running relay reload its config (SIGHUP, as 'kill -HUP PID'). "
        "With -c, the config is checked first and nothing is sent if it is invalid. The relay "
        "logs one line when the new config serves, or why it kept the old one.",
    )
    target = reload_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid-file", metavar="PATH", help="as given to the relay's --pid-file")
    target.add_argument("--pid", type=int, metavar="PID", help="the relay's (supervisor's) pid")
    reload_cmd.add_argument("-c", "--config", metavar="PATH", help="check this config first")
    _common(reload_cmd)
    return {"run": run, "check-config": check, "sandbox": sandbox, "reload": reload_cmd}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parsers = _parsers()
    command = "run"
    if args_list and args_list[0] in ("check-config", "sandbox", "reload"):
        command = args_list.pop(0)
    args = parsers[command].parse_args(args_list)
    if args.log_level not in LOG_LEVELS:  # argparse does not check a default from $LOG_LEVEL
        print(
            f"push-relay: LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {args.log_level!r}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    logs.setup(args.log_level, args.log_format)

    if command == "sandbox":
        from push_relay.sandbox import run_sandbox

        return _with_listen(args.listen, run_sandbox)

    if command == "reload":
        return _send_reload(args)
    if command == "check-config":
        cfg = _load(args.config)
        if cfg is None:
            return EXIT_CONFIG
        print(summarize(cfg))
        return 0
    with _pid_file(args.pid_file):
        if args.workers == 1:
            return _run(args)
        from push_relay import workers

        state = workers.create_state_dir()
        try:
            return _run(args, state)
        finally:
            workers.remove_state_dir(state)


def _run(args: argparse.Namespace, state: os.PathLike[str] | None = None) -> int:
    """Serve, in this process or in `args.workers` supervised worker processes."""
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    cfg = reload.with_hash_key(cfg)

    def start(host: str, port: int) -> int:
        admin = cfg.server.admin_listen
        if admin is not None and overlaps(admin, (host, port)):
            clash = f"{args.listen} is the public listen address; give the admin listener its own"
            error = ConfigError(cfg.path, clash, "server.admin_listen")
            print(f"push-relay: config error: {error}", file=sys.stderr)
            return EXIT_CONFIG
        if state is None:
            from push_relay.app import PushRelayApp
            from push_relay.server import serve

            return serve(PushRelayApp(cfg), host, port)
        from push_relay.workers import run_workers

        return run_workers(cfg, host, port, args.workers, Path(state))

    return _with_listen(args.listen, start)


def _load(path: str) -> config.Config | None:
    """The config, validated as start-up does (backends built, key files parsed), or None
    after printing one line that names the file and key."""
    try:
        cfg = reload.load_checked(path)
    except ConfigError as err:
        print(f"push-relay: config error: {err}", file=sys.stderr)
        return None
    reload.log_warnings(cfg)
    return cfg


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    pid_path = Path(path)
    pid_path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()


def _send_reload(args: argparse.Namespace) -> int:
    """`push-relay reload`: check the config when given, then SIGHUP the relay."""
    if args.config is not None and _load(args.config) is None:
        return EXIT_CONFIG
    pid = args.pid
    if args.pid_file is not None:
        try:
            pid = int(Path(args.pid_file).read_text().strip())
        except (OSError, ValueError) as err:
            print(f"push-relay: cannot read a pid from {args.pid_file}: {err}", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as err:
        print(f"push-relay: cannot signal pid {pid}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"push-relay: sent SIGHUP to pid {pid}; the relay logs the outcome")
    return 0


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to 256, not {text!r}")
    return int(text)


def _with_listen(listen: str, start: Callable[[str, int], int]) -> int:
    try:
        host, port = parse_listen(listen)
    except ListenAddressError as err:
        print(f"push-relay: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return start(host, port)


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
    if cfg.limits:
        lines.append(f"  limits: {cfg.limits.describe()}")
    lines.extend(f"  warning: {w}" for w in cfg.warnings)
    return "\n".join(lines)

"""``kubectl-sandbox``: the entry point (docs/cli.md).

``run`` parses the arguments, finds the caller's credentials and the gateway, and runs one
command; every failure is one line ``kubectl-sandbox: <message>`` on stderr and exit 1, except
``exec``/``shell``, which exit with the command's own status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from kubesandbox_cli.commands import COMMANDS, LOG_SOURCES, WAIT_STATES, Streams
from kubesandbox_cli.connection import (
    Gateway,
    Target,
    authorization,
    discover_gateway,
    load_credentials,
    namespace_of,
)
from kubesandbox_cli.errors import CliError
from kubesandbox_protocol.client import AgentError

PROG = "kubectl-sandbox"


def _global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_argument_group("global flags")
    group.add_argument("-n", "--namespace", default=default, help="namespace of the sandbox")
    group.add_argument("--kubeconfig", type=Path, default=default, help="kubeconfig file")
    group.add_argument("--context", default=default, help="kubeconfig context to use")
    group.add_argument(
        "--gateway",
        default=default,
        help="gateway URL (else $KUBESANDBOX_GATEWAY, else the kubesandbox-gateway Service)",
    )
    group.add_argument(
        "--token", default=default, help="bearer token for the gateway (else the kubeconfig's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Use kubesandbox Sandboxes through the gateway (kubectl sandbox ...).",
    )
    _global_flags(parser, None)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        # Global flags are accepted after the command too (as kubectl does); SUPPRESS keeps
        # the value given before the command when they are not repeated.
        _global_flags(p, argparse.SUPPRESS)
        return p

    p = command("exec", "run a command in a sandbox: exec NAME [-i] [-t] -- CMD [ARGS...]")
    p.add_argument("name")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    p.add_argument("argv", nargs="*", metavar="CMD", help="-- CMD [ARGS...]")

    p = command("shell", "run a script with the sandbox's shell (sh -c SCRIPT)")
    p.add_argument("name")
    p.add_argument("script")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the script")

    p = command("cp", "copy a file or directory to or from a sandbox (one side NAME:/path)")
    p.add_argument("src", help="local path, - (stdin) or NAME:/path")
    p.add_argument("dst", help="local path, - (stdout) or NAME:/path")

    p = command("ls", "list a directory in a sandbox")
    p.add_argument("name")
    p.add_argument("path", nargs="?", default="/")

    for verb, help, waits in (
        ("start", "start a stopped sandbox and wait until it runs", True),
        ("stop", "stop a sandbox (its files stay) and wait until it has stopped", True),
        ("pause", "pause a running sandbox and wait until it is paused", True),
        ("resume", "resume a paused or suspended sandbox and wait until it runs", True),
        ("suspend", "save a sandbox's memory on its node, end its VM, and wait", True),
        ("kill", "kill a sandbox's VM at once", False),
        ("drain", "ask a sandbox to finish its work and stop", False),
    ):
        p = command(verb, help)
        p.add_argument("name")
        if waits:
            p.add_argument("--no-wait", action="store_true", help="return once requested")
            p.add_argument("--timeout", type=float, default=180.0, help="seconds (180)")
        else:
            p.set_defaults(no_wait=True, timeout=0.0)

    p = command("wait", "wait until a sandbox reaches a state")
    p.add_argument("name")
    p.add_argument("--for", dest="want", choices=WAIT_STATES, default="running")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (300)")

    p = command("logs", "print a sandbox's log: the output of its execs (-f to follow)")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--tail", type=int, default=None, help="only the last N entries")
    p.add_argument("--system", action="store_true", help="with the sandbox's system lines")
    p.add_argument(
        "--sources",
        default=None,
        help=f"comma-separated, of {', '.join(LOG_SOURCES)} (default stdout,stderr,output)",
    )
    p.add_argument("--timestamps", action="store_true", help="prefix each entry with its time")

    p = command("metrics", "show a sandbox's resource usage (JSON)")
    p.add_argument("name")
    p.add_argument("-w", "--watch", action="store_true", help="one JSON line per sample")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--count", type=int, default=None, help="stop after N samples")
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parses a command line; for ``exec`` everything after ``--`` is the command, flags
    included (``exec NAME -- ls -l``)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        args = build_parser().parse_args(argv[:cut])
        if args.verb == "exec":
            args.argv = [*args.argv, *argv[cut + 1 :]]
            return args
    return build_parser().parse_args(argv)


async def run(argv: Sequence[str], io: Streams) -> int:
    """Runs one command line; returns the exit code. Never raises for expected failures."""
    try:
        args = parse(argv)
    except SystemExit as exit:  # argparse printed usage or help already
        return int(exit.code or 0)
    target = Target(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        gateway=args.gateway,
        token=args.token,
    )
    try:
        credentials = load_credentials(target)
        header = authorization(target, credentials)
        base = await discover_gateway(target, credentials)
        async with Gateway(base, namespace_of(target, credentials), header) as gateway:
            return await COMMANDS[args.verb](gateway, args, io)
    except CliError as error:
        io.err(f"{PROG}: {error.message}\n")
        return error.exit_code
    except AgentError as error:
        io.err(f"{PROG}: {error}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    io = Streams(sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer, interactive_process=True)
    try:
        code = asyncio.run(run(sys.argv[1:] if argv is None else argv, io))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 141
    raise SystemExit(code)

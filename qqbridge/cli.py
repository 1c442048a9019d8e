"""The `qqbridge` command line: one subcommand per part of the project.

Each subcommand's module owns its behaviour; this file parses arguments and turns
configuration errors into one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from qqbridge.app import run
    from qqbridge.config import load_config

    return run(load_config(args.config))


def _generate_registration(args: argparse.Namespace) -> int:
    from qqbridge.registration import generate

    notes: list[str] = []
    generate(Path(args.config), Path(args.output), mode=args.mode, notes=notes)
    for note in notes:
        print(f"qqbridge: {note}", file=sys.stderr)
    print(f"wrote {args.output}; the config {args.config} now holds the same tokens")
    return 0


def _file_mode(text: str) -> int:
    """An octal file mode for the registration: read-write for its owner, no more than
    read for anyone else, never executable."""
    try:
        mode = int(text.removeprefix("0o"), 8)
    except ValueError:
        mode = -1
    if mode < 0 or mode & ~0o644 or mode & 0o600 != 0o600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mode from 0600 to 0644 (e.g. 0640)")
    return mode


def _doctor(args: argparse.Namespace) -> int:
    """Usable at every stage: a config without its tokens yet (before
    `generate-registration`) and a missing registration are findings, not errors. A
    config that cannot be read or is invalid still ends it with exit status 2."""
    import asyncio

    from qqbridge.config import load_config
    from qqbridge.doctor import diagnose, report

    config = load_config(args.config, require_tokens=False)
    registration = Path(args.registration) if args.registration else Path(args.config).with_name("registration.yaml")
    findings = asyncio.run(diagnose(config, registration=registration, config_path=args.config))
    print(report(findings))
    return 0 if all(finding.ok for finding in findings) else 1


def build_parser() -> argparse.ArgumentParser:
    from qqbridge import __version__
    from qqbridge.demo import run as demo_run
    from qqbridge.qqsim import cli as qqsim_cli

    parser = argparse.ArgumentParser(prog="qqbridge", description="Matrix <-> QQ bridge")
    parser.add_argument("--version", action="version", version=f"qqbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the bridge (appservice endpoint and QQ pollers)")
    run.add_argument("-c", "--config", required=True, help="the config file (YAML)")
    run.set_defaults(handler=_run)

    reg = sub.add_parser("generate-registration", help="write the appservice registration for the homeserver")
    reg.add_argument("-c", "--config", required=True, help="the config file; gets the new tokens too")
    reg.add_argument("-o", "--output", default="registration.yaml",
                     help="where to write the registration (default: %(default)s, in the current directory)")
    reg.add_argument("--mode", type=_file_mode, help="the registration's file mode when the homeserver runs as "
                     "another user and reads it in place, e.g. 0644 on a volume shared with a Synapse container "
                     "(default: 0600 for a new file; it holds the tokens)")  # fmt: skip
    reg.set_defaults(handler=_generate_registration)

    doctor = sub.add_parser("doctor", help="check the config, registration, homeserver, QQ server and database")
    doctor.add_argument("-c", "--config", required=True, help="the config file")
    doctor.add_argument("-r", "--registration", help="the registration file (default: registration.yaml beside the config)")
    doctor.set_defaults(handler=_doctor)

    sim = sub.add_parser("qq-sim", help="serve the QQ HTTP protocol 1.1 from a fixture (simulator)")
    qqsim_cli.add_arguments(sim)
    sim.set_defaults(handler=qqsim_cli.run)

    demo = sub.add_parser("demo", help="run the simulator, a local Synapse and the bridge, ready for Element")
    demo_run.add_arguments(demo)
    demo.set_defaults(handler=demo_run.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qqbridge.config import ConfigError
    from qqbridge.matrix.api import MatrixError
    from qqbridge.store import StoreError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"qqbridge: bad config: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"qqbridge: database: {exc}", file=sys.stderr)
        return 1
    except MatrixError as exc:
        print(f"qqbridge: homeserver: {exc} (try `qqbridge doctor -c CONFIG`)", file=sys.stderr)
        return 1

"""The `qqbridge` command line: one subcommand per part of the project.

Each subcommand's module owns its own arguments (`add_arguments(parser)`) and its
behaviour (`run(args) -> int`); this file only wires them together.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from qqbridge.qqsim import cli as qqsim_cli

    parser = argparse.ArgumentParser(prog="qqbridge", description="Matrix <-> QQ bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("qq-sim", help="serve the QQ HTTP protocol 1.1 from a fixture (simulator)")
    qqsim_cli.add_arguments(sim)
    sim.set_defaults(handler=qqsim_cli.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.handler(args) or 0)

"""`python -m qqbridge.local WORKDIR`: run a local Synapse until Ctrl-C (demo, poking by hand)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from qqbridge.local.synapse import LocalSynapse, SynapseError


def main(argv: list[str] | None = None) -> int:
    """`python -m qqbridge.local WORKDIR [--port N] [--registration FILE ...]`:
    run a local Synapse until Ctrl-C (for the demo and for poking at by hand)."""
    parser = argparse.ArgumentParser(prog="python -m qqbridge.local", description=main.__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--registration", type=Path, action="append", default=[])
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    hs = LocalSynapse(
        args.workdir,
        server_name=args.server_name,
        host=args.host,
        port=args.port,
        appservice_registrations=args.registration,
        log_level=args.log_level,
    )
    started = time.monotonic()
    try:
        hs.start_blocking()
    except SynapseError as e:
        print(e, file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"Synapse for {hs.server_name} at {hs.base_url} (pid {hs.pid}, up in {elapsed:.1f} s)")
    print(f"config {hs.config_path}; log {hs.log_path}")
    print(f"registration_shared_secret: {hs.registration_shared_secret}")
    print("Ctrl-C (or SIGTERM) stops it.")
    # Stop Synapse on SIGTERM too, and on SIGINT even where a shell started us ignoring it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while hs.running:
            time.sleep(0.5)
        print("Synapse exited on its own; see", hs.log_path, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        hs.stop_blocking()


if __name__ == "__main__":
    sys.exit(main())

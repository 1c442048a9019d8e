"""Entry point of the Synapse stand-in image, after the real image's interface:

    generate   write /data/homeserver.yaml, a log config and a signing key for
               SYNAPSE_SERVER_NAME (SYNAPSE_REPORT_STATS required), then exit
    run ARGS   run the homeserver with ARGS (default: --config-path /data/homeserver.yaml)

As root it hands /data to uid 991 (`generate`) and drops to 991 (UID/GID override it).
"""

import os
import sys

DATA = os.environ.get("SYNAPSE_DATA_DIR", "/data")
CONFIG_DIR = os.environ.get("SYNAPSE_CONFIG_DIR", "/data")
CONFIG = os.environ.get("SYNAPSE_CONFIG_PATH", CONFIG_DIR + "/homeserver.yaml")
PYTHON = "/opt/synapse/bin/python"

# Log to stdout, as a container should (Synapse's own default writes a file).
LOG_CONFIG = """version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
"""


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def as_owner(argv: list[str]) -> list[str]:
    if "UID" in os.environ:
        uid, gid = os.environ["UID"], os.environ.get("GID", "991")
    elif os.getuid() == 0:
        uid, gid = "991", "991"
    else:
        return argv
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


def generate() -> None:
    for name in ("SYNAPSE_SERVER_NAME", "SYNAPSE_REPORT_STATS"):
        if name not in os.environ:
            fail(f"Environment variable '{name}' is mandatory in `generate` mode.")
    server = os.environ["SYNAPSE_SERVER_NAME"]
    log_config = f"{CONFIG_DIR}/{server}.log.config"
    if not os.path.exists(log_config):
        with open(log_config, "w") as f:
            f.write(LOG_CONFIG)
    if os.getuid() == 0:
        owner = f"{os.environ.get('UID', '991')}:{os.environ.get('GID', '991')}"
        os.spawnvp(os.P_WAIT, "chown", ["chown", owner, DATA, log_config])
    argv = as_owner([
        PYTHON, "-m", "synapse.app.homeserver", "--server-name", server,
        "--report-stats", os.environ["SYNAPSE_REPORT_STATS"], "--config-path", CONFIG,
        "--config-directory", CONFIG_DIR, "--data-directory", DATA,
        "--generate-config", "--open-private-ports",
    ])  # fmt: skip
    sys.exit(os.spawnvp(os.P_WAIT, argv[0], argv))


def run(args: list[str]) -> None:
    if not any(a.startswith(("--config-path", "-c")) for a in args):
        if not os.path.exists(CONFIG):
            fail(f"Config file '{CONFIG}' does not exist: run with `generate` first.")
        args += ["--config-path", CONFIG]
    argv = as_owner([PYTHON, "-m", os.environ.get("SYNAPSE_WORKER", "synapse.app.homeserver"), *args])
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "run"
    if mode == "generate":
        generate()
    elif mode == "run":
        run(sys.argv[2:])
    else:
        fail(f"Unknown execution mode '{mode}'")


if __name__ == "__main__":
    main()

"""What the local Synapse is told: its homeserver.yaml and logging config, as dicts.

No I/O here; `LocalSynapse` writes the files. The config is for tests and the demo,
not production: one plain-HTTP client listener (no federation listener, federation to
nobody), rate limits out of the way, cheap password hashing, no key-server lookups,
no URL previews, no stats reporting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Kept from one start to the next: a new macaroon key would void every access token,
# a new shared secret every caller that remembered it.
SECRET_KEYS = ("registration_shared_secret", "macaroon_secret_key", "form_secret")


def homeserver_config(
    *,
    workdir: Path,
    server_name: str,
    host: str,
    port: int,
    secrets: Mapping[str, str],
    appservice_registrations: Iterable[Path],
    log_config_path: Path,
) -> dict[str, Any]:
    return {
        "server_name": server_name,
        "public_baseurl": base_url(host, port) + "/",
        "listeners": [
            {
                "port": port,
                "bind_addresses": [host],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(log_config_path),
        "media_store_path": str(workdir / "media_store"),
        # Synapse generates the key on first start (--generate-missing-and-run is its default).
        "signing_key_path": str(workdir / f"{server_name}.signing.key"),
        **{key: secrets[key] for key in SECRET_KEYS},
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # Hermetic: no federation in or out, even if a test names a remote user.
        "federation_domain_whitelist": [],
        "enable_registration": False,
        "allow_guest_access": False,
        "url_preview_enabled": False,
        "presence": {"enabled": True},
        "app_service_config_files": [str(p) for p in appservice_registrations],
        # End-to-bridge encryption (docs/encryption.md): to-device events (MSC2409), and
        # one-time key counts and device lists (MSC3202), in the appservice's transactions.
        "experimental_features": {"msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True},
        # bcrypt's default 12 rounds cost ~0.3 s of CPU per registration or login.
        "bcrypt_rounds": 4,
        **_rate_limits(),
    }


def log_config(log_path: Path, level: str) -> dict[str, Any]:
    """A logging dictConfig sending everything at `level` and above to `log_path`."""
    return {
        "version": 1,
        "formatters": {
            # Synapse's own format; `LocalSynapse` reads the level from the fourth field.
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
                " - %(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_path),
                "encoding": "utf8",
            }
        },
        "loggers": {
            # At DEBUG this one logs access tokens.
            "synapse.storage.SQL": {"level": "INFO" if level == "DEBUG" else level},
        },
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _relaxed() -> dict[str, int]:
    # A fresh dict each time, so that the YAML dump has no anchors.
    return {"per_second": 10_000, "burst_count": 100_000}


def _rate_limits() -> dict[str, Any]:
    r = _relaxed
    return {
        "rc_message": r(),
        "rc_registration": r(),
        "rc_registration_token_validity": r(),
        "rc_login": {"address": r(), "account": r(), "failed_attempts": r()},
        "rc_joins": {"local": r(), "remote": r()},
        "rc_joins_per_room": r(),
        "rc_invites": {"per_room": r(), "per_user": r(), "per_issuer": r()},
        "rc_third_party_invite": r(),
        "rc_admin_redaction": r(),
        "rc_3pid_validation": r(),
        "rc_media_create": r(),
        "rc_presence": {"per_user": r()},
        "rc_delayed_event_mgmt": r(),
        "rc_room_creation": r(),
        "rc_reports": r(),
        "rc_user_directory": r(),
        "rc_profile": r(),
        "rc_key_requests": r(),
        "federation_rr_transactions_per_room_per_second": 10_000,
    }

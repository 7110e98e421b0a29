"""Settings: one frozen object built at start-up (CLI options or LAMELLA_* variables)."""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

from annotations.db import sqlite_url

ENV_PREFIX = "LAMELLA_"


class SettingsError(ValueError):
    """A setting with a value Lamella cannot run with (the message names it)."""


# Inclusive bounds of numeric settings; a value outside them is refused at start-up.
BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "processes": (1, 64),
    "jpeg_quality": (1, 100),
    "chunk_cache_mb": (0, 1 << 20),
    "tensorstore_cache_mb": (0, 1 << 20),
    "state_poll_seconds": (0.01, 60.0),
    "remote_stall_seconds": (1.0, 3600.0),
    "header_timeout_seconds": (0.1, 86400.0),
    "body_timeout_seconds": (0.1, 86400.0),
    "annotation_cell_limit": (1, 1_000_000),
    "volunteer_submissions_per_minute": (0, 1_000_000),
    "address_submissions_per_minute": (0, 1_000_000),
}


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default=Path("lamella-data"), metadata={"help": "catalog database and imported images"})
    database_url: str | None = field(default=None, metadata={"help": "SQLAlchemy URL; default SQLite in the data dir"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on (0: any free port)"})
    processes: int = field(default=1, metadata={"help": "server processes sharing the port"})
    jpeg_quality: int = field(default=85, metadata={"help": "JPEG quality of uint8 precomputed chunks"})
    chunk_cache_mb: int = field(default=256, metadata={"help": "LRU of encoded chunks, per process"})
    tensorstore_cache_mb: int = field(default=512, metadata={"help": "tensorstore cache pool, per process"})
    accel_redirect: str | None = field(
        default=None,
        metadata={"help": "behind nginx: answer passthrough reads with X-Accel-Redirect to this internal prefix"},
    )
    remote_stall_seconds: float = field(
        default=10.0,
        metadata={"help": "a read from a remote (http) store that receives nothing for this long is abandoned; "
                          "after 3 attempts the request fails with 503"},
    )
    state_poll_seconds: float = field(default=0.25, metadata={"help": "how often event streams look for state changes"})
    header_timeout_seconds: float = field(
        default=30.0,
        metadata={"help": "a client sending its request line and headers (or idle between requests) is cut off "
                          "after this long"},
    )
    body_timeout_seconds: float = field(
        default=120.0, metadata={"help": "a client sending its request body is cut off after this long (4 MiB at "
                                         "300 kbit/s takes 110 s)"},
    )
    annotation_cell_limit: int = field(
        default=2000, metadata={"help": "annotations per spatial-index cell of a precomputed annotation source "
                                        "above its finest level (a random subsample), for layers made from now on "
                                        "(a layer keeps the limit it was made with)"},
    )
    volunteer_submissions_per_minute: int = field(
        default=30, metadata={"help": "Citizen Science submissions one volunteer may make per minute (0: no limit)"},
    )
    address_submissions_per_minute: int = field(
        default=600, metadata={"help": "Citizen Science submissions one client address may make per minute, all "
                                       "volunteers behind it together (a classroom shares one; 0: no limit)"},
    )
    trusted_proxies: str = field(
        default="127.0.0.1,::1",
        metadata={"help": "peers whose X-Forwarded-For / X-Real-IP / X-Forwarded-Proto are believed (comma-separated "
                          "addresses or networks; empty: none). Anyone else's are ignored"},
    )
    s3_endpoint: str | None = field(
        default=None,
        metadata={"help": "endpoint of the S3-compatible object storage of s3:// stores, e.g. "
                          "https://uk1s3.embassy.ebi.ac.uk (default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else "
                          "Amazon S3)"},
    )
    s3_region: str | None = field(
        default=None, metadata={"help": "region signed into S3 requests (default: AWS_REGION or AWS_DEFAULT_REGION; "
                                        "us-east-1 with an endpoint of one's own)"},
    )
    cookie_secret: str | None = field(
        default=None,
        metadata={"help": "key signing sign-in cookies (every process and host must share it); default: made on "
                          "first start and kept in the data dir (cookie-secret, mode 0600)"},
    )

    def __post_init__(self) -> None:
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise SettingsError(f"{name} must lie between {low:g} and {high:g}, not {value!r}")
        self.proxy_networks()
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"s3_endpoint must be an http(s) URL, not {self.s3_endpoint[:80]!r}")

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` as networks; SettingsError if one is not an address or network."""
        networks = []
        for text in filter(None, (part.strip() for part in self.trusted_proxies.split(","))):
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise SettingsError(f"trusted_proxies: {text[:60]!r} is not an IP address or network") from None
        return tuple(networks)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    def resolved_cookie_secret(self) -> str:
        """The cookie key: given, or read from the data dir, where the first start creates it (mode 0600)."""
        if self.cookie_secret:
            return self.cookie_secret
        path = self.data_dir / "cookie-secret"
        if not path.exists():
            # Written whole under another name, then linked: concurrent first starts agree on one key.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            draft = self.data_dir / f".cookie-secret.{os.getpid()}"
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return path.read_text(encoding="ascii").strip()

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then LAMELLA_* variables, then explicit (non-None) overrides."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                # Each field's default says how to read its variable (None defaults are text).
                convert = str if f.default is None else (Path if isinstance(f.default, Path) else type(f.default))
                try:
                    values[f.name] = convert(raw.strip())
                except ValueError:
                    kind = "an integer" if convert is int else "a number"
                    raise SettingsError(f"{ENV_PREFIX}{f.name.upper()} must be {kind}, not {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


def bound_remote_stalls(settings: Settings) -> None:
    """Abandon a remote read that receives nothing for ``remote_stall_seconds`` (libcurl's low-speed
    limit, which tensorstore reads from the environment when its first http read starts; variables the
    operator already set win)."""
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(max(1, round(settings.remote_stall_seconds))))
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")


def configure_object_storage(settings: Settings) -> None:
    """Make ``s3_endpoint`` and ``s3_region`` the ones s3:// stores use (over the AWS variables)."""
    from tiling.stores import set_s3_defaults

    set_s3_defaults(settings.s3_endpoint, settings.s3_region)

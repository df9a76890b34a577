"""The web service's settings, from the environment (read when the app is built, never at
import time).

Tokens are configured as hashes, never as the tokens themselves: ``HISTIMPORT_WEB_TOKENS``
holds entries ``NAME:ROLE:SHA256`` separated by commas or white space, and
``HISTIMPORT_WEB_TOKENS_FILE`` names a file with one such entry per line (``#`` starts a
comment). ``histimport token NAME --role operator`` makes a token and prints its entry.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from histimport_pipeline.engine.settings import SettingsError

DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
_ENTRY = re.compile(
    r"^(?P<name>[^:\s]{1,200}):(?P<role>[a-z]+):(?:sha256:)?(?P<hash>[0-9a-f]{64})$"
)


class Role(StrEnum):
    """What a token may do: ``viewer`` reads, ``operator`` also uploads, rolls back and
    decides reviews."""

    VIEWER = "viewer"
    OPERATOR = "operator"


class UploadMode(StrEnum):
    """Who imports an uploaded file: the Dagster inbox sensor (``sensor``, the default), or
    the service itself, at once (``direct``, for a service running without Dagster)."""

    SENSOR = "sensor"
    DIRECT = "direct"


@dataclass(frozen=True)
class TokenEntry:
    """One configured token: who it stands for, its role and the SHA-256 of the token."""

    name: str
    role: Role
    digest: bytes


def hash_token(token: str) -> str:
    """The SHA-256 (hex) a token is configured by."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(name: str, role: Role) -> tuple[str, str]:
    """A fresh random token for ``name`` and its configuration entry ``NAME:ROLE:SHA256``."""
    token = secrets.token_urlsafe(32)
    return token, f"{name}:{role.value}:{hash_token(token)}"


def parse_token_entries(text: str, where: str) -> list[TokenEntry]:
    """The token entries in ``text`` (see the module docstring).

    Raises:
        SettingsError: an entry is malformed or names an unknown role; ``where`` says where.
    """
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        for raw in re.split(r"[\s,]+", line.strip()):
            if not raw:
                continue
            match = _ENTRY.match(raw)
            if match is None or match["role"] not in {r.value for r in Role}:
                shown = raw.split(":")[0]
                raise SettingsError(
                    f"{where} line {lineno}: token entry for {shown!r} is not NAME:ROLE:SHA256 "
                    "with ROLE viewer or operator and the token's SHA-256 in hex; make one with "
                    "`histimport token NAME --role viewer`"
                )
            found.append(
                TokenEntry(match["name"], Role(match["role"]), bytes.fromhex(match["hash"]))
            )
    return found


@dataclass(frozen=True)
class WebConfig:
    """How the service runs.

    Attributes:
        tokens: the configured tokens; none means reads without a token, on loopback only,
            and no writes at all.
        dagster_url: base URL of the Dagster UI (``HISTIMPORT_DAGSTER_URL``), for run links.
        max_upload_bytes: the largest upload (``HISTIMPORT_WEB_MAX_UPLOAD_BYTES``, 1 GiB).
        upload_mode: who imports uploads (``HISTIMPORT_WEB_UPLOAD_MODE``).
        secret: the key of the pages' CSRF tokens (``HISTIMPORT_WEB_SECRET``, else random
            per process).
    """

    tokens: tuple[TokenEntry, ...] = ()
    dagster_url: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    upload_mode: UploadMode = UploadMode.SENSOR
    secret: bytes = b""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebConfig:
        """Read the configuration from ``environ`` (default: ``os.environ``).

        Raises:
            SettingsError: a variable holds something unusable; the message names it.
        """
        env = os.environ if environ is None else environ
        tokens = parse_token_entries(env.get("HISTIMPORT_WEB_TOKENS", ""), "HISTIMPORT_WEB_TOKENS")
        file_name = env.get("HISTIMPORT_WEB_TOKENS_FILE", "").strip()
        if file_name:
            try:
                text = Path(file_name).expanduser().read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"HISTIMPORT_WEB_TOKENS_FILE={file_name}: cannot read it ({exc.strerror})"
                ) from None
            tokens += parse_token_entries(text, file_name)
        raw_limit = env.get("HISTIMPORT_WEB_MAX_UPLOAD_BYTES", "").strip()
        if raw_limit and not (raw_limit.isdigit() and int(raw_limit) > 0):
            raise SettingsError(
                f"HISTIMPORT_WEB_MAX_UPLOAD_BYTES={raw_limit!r} must be a whole number of bytes"
            )
        raw_mode = env.get("HISTIMPORT_WEB_UPLOAD_MODE", "").strip() or UploadMode.SENSOR.value
        if raw_mode not in {m.value for m in UploadMode}:
            raise SettingsError(
                f"HISTIMPORT_WEB_UPLOAD_MODE={raw_mode!r} must be sensor (the Dagster inbox "
                "sensor imports uploads) or direct (the service imports them itself)"
            )
        secret = env.get("HISTIMPORT_WEB_SECRET", "").encode("utf-8") or secrets.token_bytes(32)
        return cls(
            tokens=tuple(tokens),
            dagster_url=env.get("HISTIMPORT_DAGSTER_URL", "").strip().rstrip("/") or None,
            max_upload_bytes=int(raw_limit) if raw_limit else DEFAULT_MAX_UPLOAD_BYTES,
            upload_mode=UploadMode(raw_mode),
            secret=secret,
        )

"""Keyed pseudonyms: every identifier-derived value in an output is an HMAC-SHA256 of the user's key.

The same key gives the same pseudonyms, UIDs, date offsets and splits on every worker and every run, with no
shared state; a different key gives unrelated ones. The key itself never leaves this object: ``repr`` and
``str`` are redacted, and nothing here logs.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

KEY_ENV = "MEDCURATE_KEY"
MIN_KEY_BYTES = 16
DATE_SHIFT_MAX_DAYS = 3652  # offsets are in [-DATE_SHIFT_MAX_DAYS, -1]: dates move into the past by up to ~10 years


class KeyProblem(ValueError):
    """The pseudonymization key is missing or too weak."""


class Secret:
    """Holds key bytes; prints as <redacted> so the key cannot leak through logs, reprs or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes):
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __reduce__(self):
        return (Secret, (self._value,))


def load_key(key_file: str | None = None, env: dict | None = None) -> Secret:
    """The user's key from ``--key-file`` or the MEDCURATE_KEY environment variable; refuses to run without one."""
    env = os.environ if env is None else env
    if key_file:
        with open(key_file, "rb") as f:
            raw = f.read().strip()
    elif env.get(KEY_ENV):
        raw = env[KEY_ENV].encode("utf-8").strip()
    else:
        raise KeyProblem(
            f"no pseudonymization key: pass --key-file PATH or set {KEY_ENV} "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > medcurate.key`)"
        )
    if len(raw) < MIN_KEY_BYTES:
        raise KeyProblem(f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes")
    return Secret(raw)


def throwaway_key() -> Secret:
    return Secret(os.urandom(32).hex().encode())


@dataclass(frozen=True)
class Pseudonymizer:
    """Domain-separated HMAC-SHA256 derivations of one key."""

    key: Secret

    def _mac(self, domain: str, *parts: str) -> bytes:
        msg = "\x1f".join((domain,) + tuple(str(p) for p in parts)).encode("utf-8")
        return hmac.new(self.key.reveal(), msg, hashlib.sha256).digest()

    def digest(self, domain: str, *parts: str, length: int = 20) -> str:
        """Hex pseudonym of ``parts`` within ``domain`` (``length`` hex characters)."""
        return self._mac(domain, *parts).hex()[:length]

    def uid(self, uid: str) -> str:
        """DICOM UID under the 2.25 root: 2.25.<128-bit integer from the HMAC>, at most 44 characters."""
        value = int.from_bytes(self._mac("uid", uid.strip().rstrip("\x00"))[:16], "big")
        return f"2.25.{value}"

    def date_offset_days(self, patient: str) -> int:
        """Per-patient shift in days, the same for all of that patient's studies, series and workers."""
        value = int.from_bytes(self._mac("date-offset", patient)[:8], "big")
        return -1 - value % DATE_SHIFT_MAX_DAYS

    def unit_interval(self, domain: str, *parts: str) -> float:
        """A deterministic number in [0, 1) (for splits)."""
        return int.from_bytes(self._mac(domain, *parts)[:8], "big") / 2.0**64

    def patient(self, namespace: str, patient_id: str) -> str:
        return "p" + self.digest("patient", namespace, patient_id, length=20)

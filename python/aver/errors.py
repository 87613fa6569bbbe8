"""Exceptions of the aver SDK.

Every failure carries ``reason``, the verifier's stable label for it (the
``reason()`` of the Rust ``VerifyError``/``ClientError``, which is also what
the proxy sends in its ``x-aver-error`` header): ``"model"``, ``"engine"``,
``"channel-binding"``, ``"untrusted-key"``, ``"boot-pcr"``, ``"freshness"``,
``"tls"``, ``"evidence-fetch"``, ``"unreachable"``, ``"policy-invalid"``, ...
and ``message``, the human-readable explanation.

Whatever the exception, no byte of the request it interrupted left the
machine unless the endpoint had been attested first.
"""

from __future__ import annotations

__all__ = [
    "AverError",
    "AttestationError",
    "PolicyError",
    "ConnectError",
    "error_for_reason",
]


class AverError(Exception):
    """Base class of every aver error."""

    reason: str
    """The verifier's stable label for the failure."""
    message: str
    """Human-readable explanation."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(message={self.message!r}, reason={self.reason!r})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.message, self.reason))


class AttestationError(AverError):
    """The endpoint could not be attested: its evidence does not satisfy the
    policy (wrong model or engine, untrusted TPM key, evidence bound to
    another TLS key, i.e. a man in the middle, ...), or it could not be
    fetched. Nothing was sent."""


class PolicyError(AverError, ValueError):
    """The policy cannot be read or enforced (syntax, validation,
    unreadable file)."""

    def __init__(self, message: str, reason: str = "policy-invalid") -> None:
        super().__init__(message, reason)


class ConnectError(AverError, ConnectionError):
    """The endpoint (or the cluster that lists endpoints) could not be
    reached. Nothing was sent."""

    def __init__(self, message: str, reason: str = "unreachable") -> None:
        super().__init__(message, reason)


def error_for_reason(reason: str, message: str) -> AverError:
    """The exception for a reason label, as the native module raises it."""
    if reason == "policy-invalid":
        return PolicyError(message, reason)
    if reason in ("unreachable", "cluster"):
        return ConnectError(message, reason)
    if reason in ("request", "proxy", "runtime"):
        return AverError(message, reason)
    return AttestationError(message, reason)

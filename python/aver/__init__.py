"""aver: attested connections to confidential AI endpoints.

Built on the Rust verifier (``aver-verifier``) and proxy (``aver-proxy``):
no byte of a request leaves this machine before the endpoint's TPM evidence,
bound to the very TLS connection the request travels over, satisfies the
policy.

- :func:`verify` attests an endpoint and returns a :class:`Report`;
- :class:`Client` runs an embedded attesting proxy on a private unix socket;
- :func:`httpx_client` / :func:`httpx_async_client` give httpx clients that
  send through it, for the OpenAI SDK (``http_client=``).
"""

from __future__ import annotations

from typing import Optional

from . import _native
from ._client import Client
from ._httpx import AsyncAttestedTransport, AttestedTransport, httpx_async_client, httpx_client
from ._native import Report
from ._policy import PolicyArg, policy_text
from .errors import AttestationError, AverError, ConnectError, PolicyError

__version__: str = _native.__version__

__all__ = [
    "verify",
    "Report",
    "Client",
    "httpx_client",
    "httpx_async_client",
    "AttestedTransport",
    "AsyncAttestedTransport",
    "AverError",
    "AttestationError",
    "PolicyError",
    "ConnectError",
    "attestation_error",
    "__version__",
]


def verify(url: str, policy: PolicyArg, *, connect_timeout: float = 10.0) -> Report:
    """Attests ``url`` (``"https://host:port"``) against ``policy`` (a path
    to a policy file, its YAML/JSON text, or a mapping) on a fresh TLS
    connection with a fresh nonce, as ``aver verify`` does, and returns what
    was verified. Sends nothing but the evidence request.

    Raises :class:`AttestationError` (with ``.reason``) when the evidence
    does not satisfy the policy, :class:`PolicyError` for a bad policy and
    :class:`ConnectError` when the endpoint cannot be reached.
    """
    text, source = policy_text(policy)
    return _native.verify(url, text, source=source, connect_timeout=connect_timeout)


def attestation_error(error: Optional[BaseException]) -> Optional[AverError]:
    """The :class:`AverError` that caused ``error`` (itself, or one in its
    ``__cause__``/``__context__`` chain), if any: for code that catches a
    library's own exception around an aver transport."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, AverError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


"""Type stubs of ``aver._native``, the Rust extension module (python/src/lib.rs)."""

from typing import Any, Optional

__version__: str

class Report:
    """What a verification established about an endpoint."""

    @property
    def endpoint(self) -> str:
        """``host:port`` of the attested endpoint."""
    @property
    def verified_at(self) -> str:
        """When verification completed (RFC 3339, UTC)."""
    @property
    def evidence_age(self) -> float:
        """Seconds between sending the fresh nonce and accepting the evidence
        that answered it: an upper bound on the quote's age."""
    @property
    def max_evidence_age(self) -> float:
        """The policy's ``maxEvidenceAge`` in seconds."""
    @property
    def ak_name(self) -> str:
        """TPM name of the attestation key that signed the quote."""
    @property
    def spki_sha256(self) -> str:
        """``sha256:`` digest of the TLS key the evidence is bound to."""
    @property
    def model_digest(self) -> str:
        """``sha256:`` digest of the model the enclave measured."""
    @property
    def engine_digest(self) -> Optional[str]:
        """Engine image digest (enclave-measured evidence)."""
    @property
    def serving_config_digest(self) -> Optional[str]:
        """Serving configuration digest (enclave-measured evidence)."""
    @property
    def measured_by(self) -> str:
        """``"node"`` (aver-node measured the pod) or ``"enclave"``."""
    @property
    def pod(self) -> Optional[str]:
        """``namespace/name`` of the attested pod (node-measured evidence)."""
    @property
    def containers(self) -> dict[str, str]:
        """Container name to image digest (node-measured evidence)."""
    @property
    def boot_pcrs(self) -> dict[int, str]:
        """Boot PCR index to the value checked against the policy."""
    @property
    def workload_pcr(self) -> int: ...
    @property
    def workload_pcr_value(self) -> str: ...
    @property
    def nonce(self) -> str:
        """The nonce the quote answered (hex)."""
    @property
    def evidence_version(self) -> int: ...
    @property
    def launches_since_boot(self) -> int: ...
    @property
    def weak_hash(self) -> bool:
        """SHA-1 was relied on, accepted only by ``trust.allowSha1``."""
    def to_dict(self) -> dict[str, Any]:
        """The complete report as plain data (``endpoint``, ``verifiedAt``,
        ``evidenceAgeSeconds``, ``maxEvidenceAgeSeconds``, ``report``)."""
    def to_json(self) -> str: ...

def verify(
    url: str,
    policy_text: str,
    *,
    source: str = "policy text",
    connect_timeout: float = 10.0,
) -> Report:
    """Attests ``url`` against the policy text (YAML or JSON)."""

class Proxy:
    """An ``aver_proxy::Proxy`` on a private unix socket, on a background runtime."""

    def __init__(
        self,
        policy_text: str,
        *,
        source: str = "policy text",
        endpoint: Optional[str] = None,
        cluster: Optional[tuple[str, str]] = None,
        connect_timeout: float = 10.0,
        kubeconfig: Optional[str] = None,
        kube_context: Optional[str] = None,
        threads: int = 2,
    ) -> None: ...
    @property
    def socket_path(self) -> str: ...
    @property
    def upstream(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...

"""``aver.Client``: an embedded attesting proxy on a private unix socket."""

from __future__ import annotations

import os
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional

from . import _native
from ._policy import PolicyArg, policy_text
from .errors import AverError

if TYPE_CHECKING:
    import httpx


class Client:
    """Owns an embedded ``aver_proxy::Proxy``: plain HTTP/1.1 on a unix
    socket in a private temporary directory (mode 0700), served by a
    background tokio runtime. Every request sent through it travels only
    over a TLS connection to the endpoint whose evidence (fresh nonce, bound
    to that connection's key) satisfied ``policy``; a request that cannot is
    answered 502 with ``x-aver-error`` by the proxy, which the httpx clients
    of :meth:`httpx_client` turn into :class:`aver.AttestationError`.

    Give exactly one of ``endpoint`` (``"https://host:port"``) or
    ``cluster=(name, namespace)`` (the verified endpoints of a
    ConfidentialModel, read through the Kubernetes API with ``kubeconfig``
    and ``kube_context``, or the usual defaults).

    Use as a context manager, or call :meth:`close`::

        with aver.Client(policy="policy.yaml", endpoint="https://10.0.0.7:8443") as c:
            http = c.httpx_client()
    """

    def __init__(
        self,
        policy: PolicyArg,
        endpoint: Optional[str] = None,
        *,
        cluster: Optional[tuple[str, str]] = None,
        connect_timeout: float = 10.0,
        kubeconfig: "Optional[str | os.PathLike[str]]" = None,
        kube_context: Optional[str] = None,
    ) -> None:
        if (endpoint is None) == (cluster is None):
            raise AverError("give exactly one of endpoint= or cluster=(name, namespace)", "request")
        if cluster is not None:
            name, namespace = cluster
            cluster = (str(name), str(namespace))
        text, source = policy_text(policy)
        self._proxy = _native.Proxy(
            text,
            source=source,
            endpoint=endpoint,
            cluster=cluster,
            connect_timeout=connect_timeout,
            kubeconfig=os.fspath(kubeconfig) if kubeconfig is not None else None,
            kube_context=kube_context,
        )
        # Closed at garbage collection or interpreter exit at the latest,
        # so no socket directory outlives the process.
        self._finalizer = weakref.finalize(self, self._proxy.close)

    @property
    def socket_path(self) -> str:
        """The proxy's unix socket (plain HTTP/1.1)."""
        return self._proxy.socket_path

    @property
    def upstream(self) -> str:
        """The endpoint URL, or the ConfidentialModel it serves."""
        return self._proxy.upstream

    @property
    def closed(self) -> bool:
        return self._proxy.closed

    def httpx_client(self, **kwargs: Any) -> "httpx.Client":
        """An ``httpx.Client`` sending through this proxy. Closing it leaves
        this ``Client`` open. ``kwargs`` go to ``httpx.Client``."""
        from ._httpx import _sync_client

        return _sync_client(self, owns=False, **kwargs)

    def httpx_async_client(self, **kwargs: Any) -> "httpx.AsyncClient":
        """An ``httpx.AsyncClient`` sending through this proxy. Closing it
        leaves this ``Client`` open."""
        from ._httpx import _async_client

        return _async_client(self, owns=False, **kwargs)

    def close(self) -> None:
        """Stops the proxy (requests in flight get a few seconds) and removes
        its socket directory. Idempotent."""
        self._finalizer()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"aver.Client(upstream={self.upstream!r}, closed={self.closed})"

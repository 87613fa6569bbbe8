"""httpx transports that send through an embedded aver proxy."""

from __future__ import annotations

import json
from typing import Any, Optional

import httpx

from ._client import Client
from ._policy import PolicyArg
from .errors import AverError, error_for_reason

ERROR_HEADER = "x-aver-error"
"""Header of the proxy's refusals, naming the reason."""

# httpx needs a URL to build requests; the transport sends every request to
# the proxy whatever the URL says, so this only shows in Host headers.
DEFAULT_BASE_URL = "http://aver.invalid"


def _to_proxy(request: httpx.Request) -> None:
    # The unix socket speaks plain HTTP: the proxy makes the TLS connection
    # (and attests it). An https:// URL (the enclave's own, as a base_url)
    # would otherwise have httpx start TLS over the socket.
    if request.url.scheme != "http":
        request.url = request.url.copy_with(scheme="http")


def _refusal(response: httpx.Response) -> Optional[AverError]:
    reason = response.headers.get(ERROR_HEADER)
    if response.status_code != 502 or reason is None:
        return None
    message = response.text
    try:
        body = json.loads(response.content)
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return error_for_reason(reason, message or f"refused by the aver proxy ({reason})")


class AttestedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` over the unix socket of an aver proxy. A
    request the proxy refuses (502 with ``x-aver-error``) raises
    :class:`aver.AttestationError` (or ``PolicyError``/``ConnectError``)
    instead of returning a response."""

    def __init__(self, client: Client, *, owns_client: bool = False, **kwargs: Any) -> None:
        super().__init__(uds=client.socket_path, **kwargs)
        self.aver_client = client
        self._owns_client = owns_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _to_proxy(request)
        response = super().handle_request(request)
        if response.status_code == 502 and ERROR_HEADER in response.headers:
            try:
                response.read()
            finally:
                response.close()
            error = _refusal(response)
            if error is not None:
                raise error
        return response

    def close(self) -> None:
        super().close()
        if self._owns_client:
            self.aver_client.close()


class AsyncAttestedTransport(httpx.AsyncHTTPTransport):
    """The ``httpx.AsyncHTTPTransport`` counterpart of
    :class:`AttestedTransport`."""

    def __init__(self, client: Client, *, owns_client: bool = False, **kwargs: Any) -> None:
        super().__init__(uds=client.socket_path, **kwargs)
        self.aver_client = client
        self._owns_client = owns_client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _to_proxy(request)
        response = await super().handle_async_request(request)
        if response.status_code == 502 and ERROR_HEADER in response.headers:
            try:
                await response.aread()
            finally:
                await response.aclose()
            error = _refusal(response)
            if error is not None:
                raise error
        return response

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_client:
            self.aver_client.close()


def _sync_client(client: Client, *, owns: bool, **kwargs: Any) -> httpx.Client:
    transport_kwargs = {k: kwargs.pop(k) for k in ("retries", "limits") if k in kwargs}
    kwargs.setdefault("base_url", DEFAULT_BASE_URL)
    kwargs.setdefault("timeout", httpx.Timeout(600.0, connect=30.0))
    return httpx.Client(
        transport=AttestedTransport(client, owns_client=owns, **transport_kwargs), **kwargs
    )


def _async_client(client: Client, *, owns: bool, **kwargs: Any) -> httpx.AsyncClient:
    transport_kwargs = {k: kwargs.pop(k) for k in ("retries", "limits") if k in kwargs}
    kwargs.setdefault("base_url", DEFAULT_BASE_URL)
    kwargs.setdefault("timeout", httpx.Timeout(600.0, connect=30.0))
    return httpx.AsyncClient(
        transport=AsyncAttestedTransport(client, owns_client=owns, **transport_kwargs), **kwargs
    )


def httpx_client(
    policy: PolicyArg,
    endpoint: Optional[str] = None,
    *,
    cluster: Optional[tuple[str, str]] = None,
    connect_timeout: float = 10.0,
    **kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` that attests before it sends: it owns an
    :class:`aver.Client` (an embedded proxy on a private unix socket),
    closed with it. Pass it to the OpenAI SDK::

        client = openai.OpenAI(base_url="https://10.0.0.7:8443/v1", api_key="unused",
                               http_client=aver.httpx_client(policy="policy.yaml",
                                                             endpoint="https://10.0.0.7:8443"))

    Whatever the request's URL, it goes to the attested upstream only (the
    URL's path is kept). Other ``kwargs`` go to ``httpx.Client``."""
    client = Client(policy, endpoint, cluster=cluster, connect_timeout=connect_timeout)
    try:
        return _sync_client(client, owns=True, **kwargs)
    except BaseException:
        client.close()
        raise


def httpx_async_client(
    policy: PolicyArg,
    endpoint: Optional[str] = None,
    *,
    cluster: Optional[tuple[str, str]] = None,
    connect_timeout: float = 10.0,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` counterpart of :func:`httpx_client`, for
    ``openai.AsyncOpenAI``."""
    client = Client(policy, endpoint, cluster=cluster, connect_timeout=connect_timeout)
    try:
        return _async_client(client, owns=True, **kwargs)
    except BaseException:
        client.close()
        raise

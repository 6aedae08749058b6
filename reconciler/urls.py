"""Where customers reach a tenant: the one builder of a tenant's public URL and origin.

The controller writes `status.url` with it, the API's `authorize` hands out its URL, and the gateway
compares a websocket's `Origin` with its origin, so the three never disagree. Behind the documented TLS
proxy the scheme is https and the port the proxy's, not the gateway's own. Pure: no I/O.
"""

from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class PublicAddress:
    base_domain: str = "fleet.localhost"
    scheme: str = "http"
    port: int | None = None  # None or the scheme's default port: left out of URLs

    def origin(self, tenant: str) -> str:
        """`scheme://tenant.base-domain[:port]`, as a browser sends it in `Origin`."""
        port = "" if self.port in (None, DEFAULT_PORTS.get(self.scheme)) else f":{self.port}"
        return f"{self.scheme}://{tenant}.{self.base_domain}{port}"

    def url(self, tenant: str) -> str:
        return self.origin(tenant) + "/"

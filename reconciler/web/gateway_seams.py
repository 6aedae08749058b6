"""What crosses the gateway between tenants that share a registrable domain: pure functions over header and
query text (the claim taken out of queries and cookies, cookies kept on their own host, redirects kept on
the same host)."""

from urllib.parse import quote_from_bytes, unquote_plus

from reconciler.web.tenants import CLAIM_PARAMETER

# Characters a redirect's path keeps as they are; anything else (a backslash, a control character) is
# percent-encoded, so no browser reads the Location as another host.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _names_claim(pair: str) -> bool:
    return unquote_plus(pair.split("=", 1)[0]).strip().casefold() == CLAIM_PARAMETER


def split_claim(query: str) -> tuple[str | None, str]:
    """(the claim in a raw query string, the query string without it). Every `fleet_claim` parameter goes,
    however a server might split or decode it (`&` or `;`, `%5F`, `+`); the others are kept as sent."""
    claim, kept = None, []
    for piece in query.split("&"):
        pairs = piece.split(";")
        if not any(_names_claim(pair) for pair in pairs):
            if piece:
                kept.append(piece)
            continue
        for pair in pairs:
            name, _, value = pair.partition("=")
            if _names_claim(name) and value:
                claim = unquote_plus(value)
    return claim, "&".join(kept)


def without_claim_cookie(header: str) -> str:
    """A Cookie header without any `fleet_claim`, split as browsers send it: `;`-separated `name=value`
    pairs and no quoting, so `a="x; fleet_claim=..."` loses its second half rather than smuggling it."""
    return ";".join(pair for pair in header.split(";") if not _names_claim(pair)).strip()


def host_only(set_cookie: str) -> str:
    """A container's Set-Cookie without a `Domain` attribute: the cookie stays on the tenant's own host
    (split as browsers parse it: the name=value pair, then `;`-separated attributes)."""
    pair, *attributes = set_cookie.split(";")
    return ";".join([pair, *(a for a in attributes if a.split("=", 1)[0].strip().casefold() != "domain")])


def same_host_location(raw_path: bytes, query: str) -> str:
    """A path on this host to redirect to: percent-encoded as sent, one leading slash (`//evil.example/x`
    becomes `/evil.example/x`, which no browser reads as another host)."""
    path = "/" + quote_from_bytes(raw_path, safe=_PATH_SAFE).lstrip("/")
    return path + (f"?{query}" if query else "")

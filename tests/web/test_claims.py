"""Claims as the gateway checks them: made-up key ids stay away from the store, and a claim names which
tenant of its name it was minted for. Time is injected: no test waits for a cache to expire."""

from pathlib import Path

import jwt
import pytest

from reconciler.web.claims import ClaimRefused, ClaimSigner
from state import Store
from state.access import Access, SigningKey


class _CountingAccess:
    """The access tables, counting reads of the signing keys."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.reads = 0

    def signing_keys(self) -> list[SigningKey]:
        self.reads += 1
        return self.access.signing_keys()

    def active_signing_key(self) -> SigningKey:
        return self.access.active_signing_key()


@pytest.fixture
def access(tmp_path: Path) -> Access:
    return Access(Store(f"sqlite:///{tmp_path / 'fleet.db'}"))


def _forged(kid: str) -> str:
    return jwt.encode({"iss": "fleet", "sub": "acme", "aud": "acme", "exp": 2**40}, "guess", algorithm="HS256",
                      headers={"kid": kid})


def test_made_up_key_ids_reach_the_store_at_most_once_per_interval_and_are_remembered(access: Access) -> None:
    keys = _CountingAccess(access)
    now = [100.0]
    signer = ClaimSigner(keys, monotonic=lambda: now[0], unknown_kids=10)  # type: ignore[arg-type]
    token = signer.mint("acme", created_revision=7).token
    assert signer.verify(token, "acme").tenant_revision == 7 and keys.reads == 1
    now[0] += 0.5  # the cache is fresh; an unknown kid may look again once (a key rotated elsewhere)
    for _ in range(100):
        with pytest.raises(ClaimRefused, match="unknown key"):
            signer.verify(_forged("key/made-up"), "acme")
    assert keys.reads == 2, "a repeated unknown kid is remembered"
    for n in range(100):
        with pytest.raises(ClaimRefused, match="unknown key"):
            signer.verify(_forged(f"key/new-{n}"), "acme")
    assert keys.reads == 2, "new kids every time: no second look within the interval"
    assert len(signer._unknown) == 10, "the remembered kids are bounded"
    now[0] += 0.3
    with pytest.raises(ClaimRefused):
        signer.verify(_forged("key/another"), "acme")
    assert keys.reads == 3


def test_a_key_rotated_by_another_process_is_found_at_once_even_after_made_up_kids(access: Access) -> None:
    keys = _CountingAccess(access)
    now = [100.0]
    signer = ClaimSigner(keys, monotonic=lambda: now[0])  # type: ignore[arg-type]
    signer.verify(signer.mint("acme", created_revision=1).token, "acme")
    now[0] += 0.5
    with pytest.raises(ClaimRefused):
        signer.verify(_forged("key/made-up"), "acme")
    other_process = Access(access.store)
    other_process.rotate_signing_key()
    now[0] += 0.3  # past the interval between forced reads, still inside the one-second cache
    fresh = ClaimSigner(other_process).mint("acme", created_revision=1).token
    assert signer.verify(fresh, "acme").tenant == "acme"


def test_a_claim_is_for_the_tenant_it_was_minted_for_not_a_later_one_of_its_name(access: Access) -> None:
    signer = ClaimSigner(access)
    claim = signer.verify(signer.mint("acme", created_revision=41).token, "acme")
    claim.check_identity(41)
    for later in (42, None):
        with pytest.raises(ClaimRefused, match="earlier tenant named acme"):
            claim.check_identity(later)

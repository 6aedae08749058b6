"""`Idempotency-Key` on writes: the same key with the same request returns the first answer; the same key
with another request is a 409. Keys are per token, so two clients never see each other's answers.

Only answers below 500 are kept: a failure the client may retry is not frozen into the key.
"""

import hashlib
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel

from reconciler.web.context import AccessDep
from reconciler.web.errors import ApiError
from state.access import Access, StoredResponse

REPLAY_HEADER = "Idempotent-Replayed"


class Idempotency:
    def __init__(self, access: Access, key: str | None, request_hash: str) -> None:
        self.access = access
        self.key = key
        self.request_hash = request_hash

    def run(self, principal: str, answer: Callable[[], tuple[int, BaseModel]]) -> Response:
        """The stored answer for this key, or `answer()` stored under it."""
        if self.key is not None:
            first = self.access.stored_response(principal=principal, key=self.key)
            if first is not None:
                return self._replay(first)
        status, body = answer()
        text = body.model_dump_json(by_alias=True)
        if self.key is not None and status < 500:
            stored = self.access.store_response(
                principal=principal, key=self.key, response=StoredResponse(self.request_hash, status, text)
            )
            if stored.body != text or stored.status_code != status:
                return self._replay(stored)
        return Response(text, status_code=status, media_type="application/json")

    @staticmethod
    def respond(status: int, body: BaseModel) -> Response:
        """The answer of a write sent without a key (nothing to store or replay)."""
        return Response(body.model_dump_json(by_alias=True), status_code=status, media_type="application/json")

    def _replay(self, first: StoredResponse) -> Response:
        if first.request_hash != self.request_hash:
            raise ApiError(409, "Idempotency-Key", "was already used with a different request")
        return Response(first.body, status_code=first.status_code, media_type="application/json",
                        headers={REPLAY_HEADER: "true"})


async def _idempotency(
    request: Request,
    access: AccessDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
               description="Repeat a write safely: the same key and request return the first answer"),
    ] = None,
) -> Idempotency:
    if idempotency_key is None:
        return Idempotency(access, None, "")  # nothing to compare with: skip reading and hashing the body
    body = await request.body()
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except ValueError:
        canonical = body
    digest = hashlib.sha256(b"\n".join([request.method.encode(), request.url.path.encode(),
                                        str(sorted(request.query_params.multi_items())).encode(), canonical]))
    return Idempotency(access, idempotency_key, digest.hexdigest())


IdempotencyDep = Annotated[Idempotency, Depends(_idempotency)]

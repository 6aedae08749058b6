"""`Idempotency-Key` on writes: the same key with the same request returns the first answer; the same key
with another request is a 409. Keys are per token, so two clients never see each other's answers.

A request claims its key before it acts (`Access.claim_key`), so two requests with one key sent at once
make one write: the second waits for the first's answer and returns it (a claim whose request died is
taken over after a minute). Only answers below 500 are kept: a failure the client may retry (an error
raised, a 5xx) releases the claim instead of freezing into the key, and a request waiting on it then
answers itself.
"""

import hashlib
import json
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel

from reconciler.web.context import AccessDep
from reconciler.web.errors import ApiError
from state.access import Access, StoredResponse

REPLAY_HEADER = "Idempotent-Replayed"
WAIT_SECONDS = 30.0  # how long a request waits for another one with its key to answer


class Idempotency:
    def __init__(
        self, access: Access, key: str | None, request_hash: str, *,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.access = access
        self.key = key
        self.request_hash = request_hash
        self._clock = clock
        self._sleep = sleep

    def run(self, principal: str, answer: Callable[[], tuple[int, BaseModel]]) -> Response:
        """The stored answer for this key, or `answer()` stored under it. Blocks (call it off the event
        loop) while another request with this key is being answered."""
        if self.key is None:
            status, body = answer()
            return self.respond(status, body)
        first = self._claim(principal, self.key)
        if first is not None:
            return self._replay(first)
        try:
            status, body = answer()
        except BaseException:
            self.access.release_key(principal=principal, key=self.key)
            raise
        text = body.model_dump_json(by_alias=True)
        if status >= 500:
            self.access.release_key(principal=principal, key=self.key)
            return Response(text, status_code=status, media_type="application/json")
        stored = self.access.store_response(
            principal=principal, key=self.key, response=StoredResponse(self.request_hash, status, text)
        )
        if stored.body != text or stored.status_code != status:
            return self._replay(stored)
        return Response(text, status_code=status, media_type="application/json")

    def _claim(self, principal: str, key: str) -> StoredResponse | None:
        """None once this request holds the key; else the first answer stored under it."""
        deadline = self._clock() + WAIT_SECONDS
        pause = 0.005
        while True:
            first = self.access.claim_key(principal=principal, key=key, request_hash=self.request_hash)
            if first is None:
                return None
            if first.request_hash != self.request_hash or not first.in_progress:
                return first  # `_replay` refuses another request's key
            if self._clock() > deadline:
                raise ApiError(409, "Idempotency-Key", "a request with this key is still being answered; retry")
            self._sleep(pause)  # the other request is answering: its answer is this one's too
            pause = min(pause * 2, 0.1)

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
               description="Repeat a write safely: the same key and request return the first answer, also when "
               "sent at once (the second waits for the first to answer); another request with it is a 409"),
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

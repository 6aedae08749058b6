"""A watch stream of tenant changes, as server-sent events, resumable from a revision.

    event: tenant    id: REVISION   data: {"name", "revision", "phase", "deleting", "url"}
    event: deleted   id: REVISION   data: {"name"}   (the record is gone: everything was removed)

Start from `?revision=N` (or the `Last-Event-ID` header a browser's EventSource sends on reconnect) to
get every tenant whose record or status changed after N and every tenant deleted after N (a tombstone
per deleted name, written with the deletion), in revision order, then live changes. Polls the store; it
never holds a transaction open between polls.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from reconciler.web.auth import Reader
from reconciler.web.context import ContextDep, WebContext
from reconciler.web.tenants import ERRORS

POLL_SECONDS = 0.1
KEEPALIVE_SECONDS = 15.0
BATCH = 500

router = APIRouter(prefix="/api/v1", tags=["watch"], responses=ERRORS)


def _next_batch(context: WebContext, revision: int) -> list[str]:
    """The changes and deletions after `revision`, merged in revision order, as SSE messages. When either
    list was cut at its limit, only what comes before the cut is sent: the next poll continues there."""
    changes = context.access.tenant_changes_since(revision, limit=BATCH)
    deletions = context.store.deletions_since(revision, limit=BATCH)
    cut = min([kind[-1].revision for kind in (changes, deletions) if len(kind) == BATCH], default=None)
    messages: list[tuple[int, str]] = []
    for change in changes:
        data = {"name": change.name, "revision": change.revision, "phase": change.phase,
                "deleting": change.deleting, "url": change.url}
        messages.append((change.revision, f"id: {change.revision}\nevent: tenant\ndata: {json.dumps(data)}\n\n"))
    for deletion in deletions:
        data = {"name": deletion.name}
        messages.append((deletion.revision, f"id: {deletion.revision}\nevent: deleted\ndata: {json.dumps(data)}\n\n"))
    messages.sort(key=lambda message: message[0])
    return [text for at, text in messages if cut is None or at <= cut]


async def _stream(context: WebContext, request: Request, revision: int) -> AsyncIterator[str]:
    yield f"retry: 1000\n: watching from revision {revision}\n\n"
    idle = 0.0
    while not await request.is_disconnected() and not getattr(request.app.state, "closing", False):
        messages = await run_in_threadpool(_next_batch, context, revision)
        for message in messages:
            revision = int(message.partition("\n")[0].removeprefix("id: "))
            yield message
        if messages:
            idle = 0.0
            continue
        idle += POLL_SECONDS
        if idle >= KEEPALIVE_SECONDS:
            idle = 0.0
            yield ": keepalive\n\n"
        await asyncio.sleep(POLL_SECONDS)


@router.get("/watch", summary="Server-sent events of tenant changes",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def watch(
    request: Request, context: ContextDep, _token: Reader,
    revision: Annotated[int | None, Query(ge=0, le=2**62, description="Changes after this revision")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20, pattern=r"^\d*$")] = None,
) -> StreamingResponse:
    start = revision if revision is not None else int(last_event_id) if last_event_id else 0
    return StreamingResponse(_stream(context, request, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

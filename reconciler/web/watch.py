"""A watch stream of tenant changes, as server-sent events, resumable from a revision.

    event: tenant    id: REVISION   data: {"name", "revision", "phase", "deleting", "url"}
    event: deleted                  data: {"name"}   (the record is gone: everything was removed)

Start from `?revision=N` (or the `Last-Event-ID` header a browser's EventSource sends on reconnect) to
get every tenant whose record or status changed after N, then live changes. Polls the store; it never
holds a transaction open between polls.
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

router = APIRouter(prefix="/api/v1", tags=["watch"], responses=ERRORS)


async def _stream(context: WebContext, request: Request, revision: int) -> AsyncIterator[str]:
    store, access = context.store, context.access
    last_events = await run_in_threadpool(store.events, limit=1)
    event_id = last_events[-1].id if last_events else 0
    yield f"retry: 1000\n: watching from revision {revision}\n\n"
    idle = 0.0
    while not await request.is_disconnected() and not getattr(request.app.state, "closing", False):
        changes = await run_in_threadpool(access.tenant_changes_since, revision)
        for change in changes:
            revision = change.revision
            data = {"name": change.name, "revision": change.revision, "phase": change.phase,
                    "deleting": change.deleting, "url": change.url}
            yield f"id: {change.revision}\nevent: tenant\ndata: {json.dumps(data)}\n\n"
        events = await run_in_threadpool(store.events, after_id=event_id, limit=1000)
        for event in events:
            event_id = event.id
            if event.reason == "Finalized":
                yield f"event: deleted\ndata: {json.dumps({'name': event.tenant})}\n\n"
        if changes or events:
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

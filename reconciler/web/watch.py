"""A watch stream of tenant changes, as server-sent events, resumable from a revision.

    event: tenant    id: REVISION   data: {"name", "revision", "phase", "deleting", "url"}
    event: deleted   id: REVISION   data: {"name"}   (the record is gone: everything was removed)
    event: gone                     data: {"revision", "horizon"}   (too far behind: list again, then watch)

Start from `?revision=N` (or the `Last-Event-ID` header a browser's EventSource sends on reconnect) to
get every tenant whose record or status changed after N and every tenant deleted after N (a tombstone
per deleted name, written with the deletion), in revision order, then live changes. Each poll reads
changes and deletions in one snapshot (`state.feed`), so no revision is skipped. Tombstones are pruned
after a retention: resuming from a revision older than the pruned ones answers 410 Gone (or, on a stream
already open, one `gone` event and the end of the stream); the client lists the tenants again and watches
from the revision it took before listing (`/healthz`). Revision 0 is always a fresh start. Polls the
store; it never holds a transaction open between polls.
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
from reconciler.web.errors import ApiError, ErrorBody
from reconciler.web.tenants import ERRORS
from state.errors import RevisionCompacted
from state.feed import FeedEvent, FeedKind, WatchFeed

POLL_SECONDS = 0.1
KEEPALIVE_SECONDS = 15.0
BATCH = 500

router = APIRouter(prefix="/api/v1", tags=["watch"], responses=ERRORS)


def _message(event: FeedEvent) -> str:
    data: dict[str, object] = {"name": event.name}
    if event.kind == FeedKind.TENANT:
        data = {"name": event.name, "revision": event.revision, "phase": event.phase, "deleting": event.deleting,
                "url": event.url}
    return f"id: {event.revision}\nevent: {event.kind.value}\ndata: {json.dumps(data)}\n\n"


def _next_batch(feed: WatchFeed, revision: int) -> list[str]:
    """The changes and deletions after `revision`, in revision order, as SSE messages: one snapshot, so
    the batch is every event up to its last one and the next poll continues there."""
    return [_message(event) for event in feed.since(revision, limit=BATCH)]


async def _stream(feed: WatchFeed, request: Request, revision: int) -> AsyncIterator[str]:
    yield f"retry: 1000\n: watching from revision {revision}\n\n"
    idle = 0.0
    while not await request.is_disconnected() and not getattr(request.app.state, "closing", False):
        try:
            messages = await run_in_threadpool(_next_batch, feed, revision)
        except RevisionCompacted as error:  # fell behind the pruned tombstones while connected
            data = {"revision": error.revision, "horizon": error.horizon}
            yield f"event: gone\ndata: {json.dumps(data)}\n\n"
            return
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
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       410: {"model": ErrorBody, "description": "The revision is older than the pruned "
                             "deletions: list the tenants again, then watch from the revision taken before"}})
async def watch(
    request: Request, context: ContextDep, _token: Reader,
    revision: Annotated[int | None, Query(ge=0, le=2**62, description="Changes after this revision")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{0,18}$")] = None,
) -> StreamingResponse:
    start = revision if revision is not None else int(last_event_id) if last_event_id else 0
    return await event_stream(context, request, start)


async def event_stream(context: WebContext, request: Request, start: int) -> StreamingResponse:
    """The stream from revision `start` (410 when it is older than the pruned deletions): the API's watch,
    and the dashboard's (which authenticates by its cookie, as a browser's EventSource cannot send a header)."""
    feed = WatchFeed(context.store)
    try:
        await run_in_threadpool(feed.check, start)
    except RevisionCompacted as error:
        raise ApiError(410, "revision", str(error).removeprefix("revision: ")) from error
    return StreamingResponse(_stream(feed, request, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

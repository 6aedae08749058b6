"""The billing webhook: Stripe's signature scheme, and subscription events mapped to desired state.

    customer.subscription.created  -> a tenant with the template and quota of the subscription's plan
    customer.subscription.updated  -> the same (a re-quota when the plan changed); status canceled -> delete
    customer.subscription.deleted  -> delete the tenant (the reconciler removes everything it had)
    anything else                  -> acknowledged and recorded, nothing changed

Each event id is applied once: a replay answers 200 with the first outcome. Per subscription the store
keeps the newest event applied and whether it was deleted, so an event that arrives late never resurrects
a deleted tenant nor undoes a newer plan. A request whose signature, timestamp or body is wrong, or whose
plan is unknown, gets a 4xx naming the problem and writes nothing (the billing system retries it).

A tenant belongs to exactly one subscription: the one that first applied a plan to it, until that one is
deleted. A subscription that owns no tenant (never provisioned: its plan was unknown, or it named a tenant
someone else owns) changes nothing when it ends (200, recorded); a create or update naming a tenant that
another subscription owns, or that no subscription made, is refused with 409 (the billing system must know
that this subscription provisioned nothing). Each event's check, its write and its record are one
transaction with the subscription's row locked, so concurrent events of one subscription apply in turn.

Never trust the body before the signature is checked; never log a secret.
"""

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.web.context import ContextDep, WebConfig
from reconciler.web.errors import ApiError, ErrorBody, validation_error
from specs import Event, Metadata, Tenant, TenantSpec
from specs.billing_plan import Plan
from specs.names import validate_name
from state import Conflict, Store, TenantOwned
from state.access import Access, Subscription, SubscriptionTransaction, TenantStanding, WebhookEventRecord

SIGNATURE_HEADER = "Stripe-Signature"
CREATED, UPDATED, DELETED = (
    "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"
)
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
TENANT_METADATA_KEY = "fleet_tenant"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_TIMESTAMP = re.compile(r"[0-9]{1,19}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

router = APIRouter(prefix="/api/v1", tags=["webhooks"])


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Stripe adds fields; we read only these


class Price(_Loose):
    id: str = Field(min_length=1, max_length=255)
    product: str | dict[str, Any] | None = None

    @property
    def product_id(self) -> str | None:
        if isinstance(self.product, dict):
            value = self.product.get("id")
            return value if isinstance(value, str) else None
        return self.product


class SubscriptionItem(_Loose):
    price: Price


class SubscriptionItems(_Loose):
    data: list[SubscriptionItem] = Field(min_length=1)


class SubscriptionObject(_Loose):
    id: str = Field(min_length=1, max_length=255)
    customer: str = Field(min_length=1, max_length=255)
    status: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    items: SubscriptionItems


class EventData(_Loose):
    object: dict[str, Any]


class BillingEvent(_Loose):
    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=255)
    created: int = Field(ge=0, le=2**62)
    data: EventData


class WebhookResult(BaseModel):
    event_id: str
    type: str
    outcome: str
    tenant: str | None = None
    replayed: bool = False


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe would send (for tests, benchmarks and docs)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    payload: bytes, header: str | None, secrets: Sequence[str], *, now: float, tolerance: int = 300
) -> int:
    """Check a `Stripe-Signature` header; return its timestamp. Several v1 values and several secrets are
    accepted, so either side can rotate."""
    if not header:
        raise ApiError(400, SIGNATURE_HEADER, "is required")
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        # ASCII only: str.isdigit() and int() also take other scripts' digits ("١٢٣", "²"), and
        # compare_digest refuses non-ASCII text; the header is the sender's input, so neither may reach them.
        if key == "t" and _TIMESTAMP.fullmatch(value):
            timestamp = int(value)
        elif key == "v1" and _HEX_SHA256.fullmatch(value):
            signatures.append(value.lower().encode("ascii"))
    if timestamp is None or not signatures:
        raise ApiError(400, SIGNATURE_HEADER, "must be t=TIMESTAMP,v1=SIGNATURE[,v1=...] (decimal seconds, "
                       "64 hex digits)")
    signed = f"{timestamp}.".encode() + payload
    expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest().encode("ascii") for s in secrets]
    if not any(hmac.compare_digest(e, s) for e in expected for s in signatures):
        raise ApiError(400, SIGNATURE_HEADER, "no signature matches the body with any webhook secret")
    if abs(now - timestamp) > tolerance:
        raise ApiError(400, SIGNATURE_HEADER, f"timestamp is more than {tolerance} seconds from now (replayed?)")
    return timestamp


def tenant_name_for(subscription: SubscriptionObject) -> str:
    """The subscription's `fleet_tenant` metadata if set, else a DNS label derived from the customer id."""
    chosen = subscription.metadata.get(TENANT_METADATA_KEY)
    if chosen is not None:
        try:
            return validate_name(chosen)
        except ValueError as error:
            raise ApiError(422, f"data.object.metadata.{TENANT_METADATA_KEY}", str(error)) from error
    return customer_tenant_name(subscription.customer)


def customer_tenant_name(customer: str) -> str:
    """A DNS label derived from a billing customer id (`cus_Acme` -> `cus-acme-<6 hex>`)."""
    readable = re.sub(r"[^a-z0-9]+", "-", customer.lower()).strip("-")[:48].strip("-") or "customer"
    # Stripe ids are case-sensitive; the suffix keeps two that differ only in case apart.
    return f"{readable}-{hashlib.sha256(customer.encode()).hexdigest()[:6]}"


class BillingWebhook:
    def __init__(self, store: Store, access: Access, config: WebConfig, clock: Callable[[], float]) -> None:
        self.store = store
        self.access = access
        self.config = config
        self.clock = clock

    def handle(self, payload: bytes, signature: str | None) -> WebhookResult:
        if not self.config.webhook_secrets:
            raise ApiError(503, "webhook", "no webhook secret is configured (set FLEET_WEBHOOK_SECRET)")
        verify_signature(payload, signature, self.config.webhook_secrets, now=self.clock(),
                         tolerance=self.config.webhook_tolerance_seconds)
        try:
            event = BillingEvent.model_validate_json(payload)
        except ValidationError as error:
            raise validation_error(error) from error
        first = self.access.webhook_event(event.id)
        if first is not None:
            return _replayed(event, first)
        if event.type not in (CREATED, UPDATED, DELETED):
            return self._record_other(event)
        try:
            subscription = SubscriptionObject.model_validate(event.data.object)
        except ValidationError as error:
            raise validation_error(error, prefix="data.object.") from error
        try:
            with self.access.subscription_transaction(subscription.id, customer=subscription.customer) as unit:
                first = unit.webhook_event(event.id)  # a concurrent delivery of this event, applied meanwhile
                if first is not None:
                    return _replayed(event, first)
                if event.type == DELETED or subscription.status in ENDED_STATUSES:
                    result = self._end(unit, event, subscription)
                else:
                    result = self._provision(unit, event, subscription)
        except TenantOwned as error:  # another subscription bound the tenant between our check and our write
            self._refuse(event, subscription, TenantStanding(error.tenant, True, False, error.owner))
        logger.bind(event=event.id, type=event.type, subscription=subscription.id, tenant=result.tenant).info(
            "Applied billing event: {}", result.outcome)
        return result

    def _end(self, unit: SubscriptionTransaction, event: BillingEvent,
             subscription: SubscriptionObject) -> WebhookResult:
        """Delete the tenant this subscription owns; a subscription that owns none changes nothing, but
        is recorded as deleted so a late `created` of it provisions nothing either."""
        known = unit.subscription
        newest = max(event.created, known.last_event_created if known else 0)
        if known is not None and known.owns_tenant:
            existed = unit.request_delete(known.tenant)
            state = replace(known, customer=subscription.customer, last_event_created=newest, deleted=True)
            return self._record(unit, event, known.tenant, "deleting tenant" if existed else "tenant already absent",
                                state)
        if known is not None and known.deleted:
            outcome = "ignored: the subscription was already deleted"
        else:
            outcome = "ignored: the subscription owns no tenant (none was provisioned for it); nothing deleted"
        if known is not None:
            asked = known.tenant
        else:
            try:
                asked = tenant_name_for(subscription)
            except ApiError:  # a name that could never have been provisioned: record the customer's
                asked = customer_tenant_name(subscription.customer)
        state = Subscription(subscription.id, asked, subscription.customer, None, newest, deleted=True)
        return self._record(unit, event, None, outcome, state)

    def _provision(self, unit: SubscriptionTransaction, event: BillingEvent,
                   subscription: SubscriptionObject) -> WebhookResult:
        """Give the subscription's tenant the plan: the tenant it owns, or a new one of the name it asks for
        when no other subscription and no other writer has that name."""
        known = unit.subscription
        if known is not None and known.deleted:
            return self._record(unit, event, None, "ignored: the subscription was deleted", None)
        if known is not None and event.created < known.last_event_created:
            return self._record(unit, event, known.tenant if known.owns_tenant else None,
                                "ignored: older than an event already applied", None)
        plan = self._plan_for(unit, subscription)  # first: a subscription of another product is not Fleet's at all
        name = known.tenant if known is not None and known.owns_tenant else tenant_name_for(subscription)
        standing = unit.standing(name)
        if standing.owner != subscription.id and (standing.owner is not None or standing.exists):
            self._refuse(event, subscription, standing)
        outcome = unit.apply_tenant(self._tenant(name, subscription, plan))
        newest = max(event.created, known.last_event_created if known else 0)
        state = Subscription(subscription.id, name, subscription.customer, plan.id, newest, deleted=False)
        return self._record(unit, event, name, f"tenant {outcome.value} with plan {plan.id}", state)

    @staticmethod
    def _refuse(event: BillingEvent, subscription: SubscriptionObject, standing: TenantStanding) -> NoReturn:
        field = (f"data.object.metadata.{TENANT_METADATA_KEY}" if TENANT_METADATA_KEY in subscription.metadata
                 else "data.object.customer")
        if standing.owner is not None:
            rule = (f"tenant {standing.name} belongs to subscription {standing.owner}; a tenant belongs to exactly "
                    f"one subscription (set metadata.{TENANT_METADATA_KEY} to a free name for this one)")
        elif standing.deleting:
            rule = f"tenant {standing.name} is being deleted; wait for it to go, then create it again"
        else:
            rule = (f"tenant {standing.name} exists and no subscription owns it; Fleet does not hand an existing "
                    f"tenant to a subscription (set metadata.{TENANT_METADATA_KEY} to a free name)")
        logger.bind(event=event.id, subscription=subscription.id, tenant=standing.name, owner=standing.owner).warning(
            "Refused billing event: {}", rule)
        raise ApiError(409, field, rule)

    @staticmethod
    def _plan_for(unit: SubscriptionTransaction, subscription: SubscriptionObject) -> Plan:
        price = subscription.items.data[0].price
        for candidate in (price.id, price.product_id):
            if candidate:
                plan = unit.plan(candidate)
                if plan is not None:
                    return plan
        raise ApiError(422, "data.object.items.data.0.price.id",
                       f"no plan for price {price.id!r} or product {price.product_id!r}; add one with fleet plan apply")

    @staticmethod
    def _tenant(name: str, subscription: SubscriptionObject, plan: Plan) -> Tenant:
        labels = {"billing/customer": subscription.customer, "billing/subscription": subscription.id,
                  "billing/plan": plan.id}
        labels = {key: value for key, value in labels.items() if _LABEL_VALUE.fullmatch(value)}
        try:
            return Tenant(
                metadata=Metadata(name=name, labels=labels),
                spec=TenantSpec(template=plan.template, resources=plan.resources, network=plan.network,
                                sleep=plan.sleep),
            )
        except ValidationError as error:
            raise validation_error(error) from error

    @staticmethod
    def _record(unit: SubscriptionTransaction, event: BillingEvent, tenant: str | None, outcome: str,
                state: Subscription | None) -> WebhookResult:
        """Record the event, the subscription's new state and the tenant's event, in the unit's transaction."""
        events = [] if tenant is None else [
            Event(tenant=tenant, reason="BillingEvent", message=f"{event.type} {event.id}: {outcome}")
        ]
        unit.record(event_id=event.id, type=event.type, tenant=tenant, outcome=outcome, subscription=state,
                    events=events)
        return WebhookResult(event_id=event.id, type=event.type, outcome=outcome, tenant=tenant)

    def _record_other(self, event: BillingEvent) -> WebhookResult:
        outcome = "ignored: not a subscription event Fleet acts on"
        if not self.access.record_webhook_event(event_id=event.id, type=event.type, tenant=None, outcome=outcome):
            first = self.access.webhook_event(event.id)  # a concurrent delivery of the same event recorded it first
            assert first is not None
            return _replayed(event, first)
        logger.bind(event=event.id, type=event.type).info("Recorded billing event: {}", outcome)
        return WebhookResult(event_id=event.id, type=event.type, outcome=outcome)


def _replayed(event: BillingEvent, first: WebhookEventRecord) -> WebhookResult:
    return WebhookResult(event_id=event.id, type=first.type, outcome=first.outcome, tenant=first.tenant,
                         replayed=True)


_OPENAPI_BODY: dict[str, Any] = {
    "parameters": [{"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
                    "description": "t=TIMESTAMP,v1=HMAC-SHA256(secret, 'TIMESTAMP.BODY') hex"}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": BillingEvent.model_json_schema()}}},
}


@router.post("/webhooks/billing", response_model=WebhookResult, openapi_extra=_OPENAPI_BODY,
             responses={code: {"model": ErrorBody} for code in (400, 409, 413, 422, 503)},
             summary="Stripe-style billing webhook (signed; no token)")
async def billing_webhook(request: Request, context: ContextDep) -> WebhookResult:
    # The app's body limit has refused a declared length over it before this runs, and stops a streamed
    # body as soon as it passes the limit (413): at most the limit is ever held here.
    payload = await request.body()
    handler = BillingWebhook(context.store, context.access, context.config, context.clock or time.time)
    assert context.metrics is not None  # WebContext makes one when none is given
    counted = context.metrics.webhook_events
    try:
        result = await run_in_threadpool(handler.handle, payload, request.headers.get(SIGNATURE_HEADER))
    except Conflict as error:
        # The tenant is still being deleted: not applied, so the billing system retries it later.
        counted.labels(outcome="conflict").inc()
        raise ApiError(409, "metadata.name", str(error).partition(": ")[2] or str(error)) from error
    except ApiError as error:
        counted.labels(outcome=_REFUSED.get(error.status, "invalid")).inc()
        raise
    ignored = result.outcome.startswith("ignored")
    counted.labels(outcome="replayed" if result.replayed else "ignored" if ignored else "applied").inc()
    return result


# How a refused delivery is counted (fleet_webhook_events_total{outcome}), by the status it got.
_REFUSED = {400: "rejected_signature", 409: "conflict", 422: "invalid", 503: "unavailable"}



"""The HTTP API as a billing system or an operator uses it: real HTTP on loopback, a real SQLite store,
the controller converging tenants on the fake driver."""

import threading
import uuid

import pytest

from state import Store
from state.access import Access, Role
from tests.helpers import wait_for
from tests.web.conftest import Web

DOC = {"kind": "Tenant", "metadata": {"name": "acme", "labels": {"tier": "gold"}}, "spec": {"template": "base"}}


def _doc(name: str, **spec: object) -> dict[str, object]:
    return {"kind": "Tenant", "metadata": {"name": name}, "spec": {"template": "base", **spec}}


def test_no_token_a_wrong_token_or_a_wrong_role_is_refused_and_nothing_is_written(web: Web) -> None:
    with web.client(None) as anonymous:
        response = anonymous.post("/api/v1/tenants", json=DOC)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["field"] == "Authorization"
        wrong = anonymous.post("/api/v1/tenants", json=DOC, headers={"authorization": "Bearer fleet_nope"})
        assert wrong.status_code == 401, wrong.text
    with web.client(Role.VIEWER) as viewer:
        refused = viewer.post("/api/v1/tenants", json=DOC)
        assert refused.status_code == 403 and "role viewer may not" in refused.json()["error"]["rule"]
        assert viewer.get("/api/v1/tenants").status_code == 200
    with web.client(Role.BILLING) as billing:
        assert billing.put("/api/v1/plans/price_x", json={"id": "price_x", "template": "base"}).status_code == 403
    web.access.revoke_token("t-billing")
    with web.client(Role.BILLING) as revoked:
        assert revoked.get("/api/v1/tenants").status_code == 401
    assert web.store.list_tenants().items == [] and web.access.list_plans() == []


def test_a_tenant_is_created_read_listed_patched_and_deleted_through_the_api(web: Web) -> None:
    with web.client(Role.BILLING) as client:
        created = client.post("/api/v1/tenants", json=DOC)
        assert created.status_code == 201, created.text
        assert created.json()["outcome"] == "created" and created.json()["tenant"]["metadata"]["name"] == "acme"
        assert client.post("/api/v1/tenants", json=DOC).status_code == 409
        for name in ("beta", "gamma"):
            assert client.post("/api/v1/tenants", json=_doc(name)).status_code == 201
        web.wait_running("acme")
        tenant = client.get("/api/v1/tenants/acme").json()
        assert tenant["status"]["phase"] == "Running" and tenant["apiVersion"] == "fleet/v1"
        first = client.get("/api/v1/tenants", params={"limit": 2}).json()
        assert [t["metadata"]["name"] for t in first["items"]] == ["acme", "beta"]
        rest = client.get("/api/v1/tenants", params={"limit": 2, "after": first["next_after"]}).json()
        assert [t["metadata"]["name"] for t in rest["items"]] == ["gamma"] and rest["next_after"] is None
        gold = client.get("/api/v1/tenants", params={"label": "tier=gold"}).json()["items"]
        assert [t["metadata"]["name"] for t in gold] == ["acme"]
        wait_for(lambda: len(client.get("/api/v1/tenants", params={"phase": "Running"}).json()["items"]) == 3,
                 what="three tenants Running")
        patched = client.patch("/api/v1/tenants/acme", json={"spec": {"resources": {"memory": "512Mi"}}})
        assert patched.status_code == 200, patched.text
        assert patched.json()["outcome"] == "configured" and patched.json()["generation"] == 2
        assert "apply resources" in " ".join(patched.json()["plan"])
        wait_for(lambda: web.driver.inspect("acme").resources.memory == 512 << 20,  # type: ignore[union-attr]
                 what="the new quota on the host")
        assert client.get("/api/v1/tenants/acme").json()["metadata"]["labels"] == {"tier": "gold"}
        rehearsed = client.delete("/api/v1/tenants/acme", params={"dry_run": "true"})
        assert rehearsed.status_code == 202 and rehearsed.json()["dry_run"] is True
        assert rehearsed.json()["plan"] == ["stop the container", "delete everything the tenant has"]
        assert client.get("/api/v1/tenants/acme").json()["status"]["phase"] == "Running", "a dry run writes nothing"
        deleted = client.delete("/api/v1/tenants/acme")
        assert deleted.status_code == 202 and deleted.json()["outcome"] == "deleting"
        wait_for(lambda: client.get("/api/v1/tenants/acme").status_code == 404, what="acme to be gone")
        reasons = [e["reason"] for e in client.get("/api/v1/tenants/acme/events").json()]
        assert "Deleted" in reasons and reasons[-1] == "Finalized"
        assert web.driver.inspect("acme") is None


@pytest.mark.parametrize(
    ("document", "field", "rule"),
    [
        (_doc("big", resources={"memory": "9Ti"}), "spec.resources.memory", "must be between"),
        (_doc("slow", resources={"io": "10Ki"}), "spec.resources.io", "must be between 1Mi and 1Ti"),
        (_doc("Bad_Name"), "metadata.name", "must be a DNS label"),
        (_doc("typo", resourcez={}), "spec.resourcez", "unknown field"),
        (_doc("ports", network={"ingress": [70000]}), "spec.network.ingress", "1 to 65535"),
        ({"kind": "Tenant", "metadata": {"name": "x"}}, "spec", "is required"),
    ],
)
def test_an_invalid_spec_gets_422_naming_the_field_and_nothing_is_written(
    web: Web, document: dict[str, object], field: str, rule: str
) -> None:
    with web.client() as client:
        response = client.post("/api/v1/tenants", json=document)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and rule in error["rule"], error
    assert web.store.list_tenants().items == []


def test_a_tenant_naming_a_template_the_fleet_does_not_have_gets_409_and_nothing_is_written(web: Web) -> None:
    """Valid in itself (its schema allows any template name), it conflicts with what the store holds: it
    succeeds once the template exists, so it is a 409 as a generated client expects, not a 422."""
    with web.client() as client:
        response = client.post("/api/v1/tenants", json=_doc("notemplate") | {"spec": {"template": "nope"}})
        assert response.status_code == 409, response.text
        assert response.json()["error"]["field"] == "spec.template"
        assert "unknown template 'nope'" in response.json()["error"]["rule"]
        plan = client.put("/api/v1/plans/price_x", json={"id": "price_x", "template": "nope"})
        assert plan.status_code == 409 and plan.json()["error"]["field"] == "template", plan.text
    assert web.store.list_tenants().items == [] and web.access.list_plans() == []


def test_what_the_openapi_document_refuses_the_server_refuses_with_422_naming_the_field(web: Web) -> None:
    """Each found by schemathesis: refused by the server but allowed by the schema, answered with an
    undocumented 400, or a 500."""
    with web.client() as client:
        for selector in ("", "=gold", "tier", "tier=a b"):
            answer = client.get("/api/v1/tenants", params={"label": selector})
            assert answer.status_code == 422 and answer.json()["error"]["field"] == "label", (selector, answer.text)
        assert client.get("/api/v1/tenants", params={"label": ["tier=", "billing/plan=price_basic"]}).status_code == 200
        for body in (b"\x80\n", b"*\xff"):
            for path in ("/api/v1/tenants", "/api/v1/tenants/acme/authorize", "/api/v1/plans/price_x"):
                method = "PUT" if "plans" in path else "POST"
                answer = client.request(method, path, content=body, headers={"content-type": "application/json"})
                assert answer.status_code == 422 and answer.json()["error"]["field"] == "body", (path, answer.text)
        for cpu in ("1e400", "1.2e308", "-1e400"):
            answer = client.post("/api/v1/tenants", content=f'{{"metadata": {{"name": "huge"}}, "spec": {{"template": '
                                 f'"base", "resources": {{"cpu": {cpu}}}}}}}'.encode(),
                                 headers={"content-type": "application/json"})
            assert answer.status_code == 422 and answer.json()["error"]["field"] == "spec.resources.cpu", answer.text
        # 268435456.0 is 268435456 in JSON and in its schema: taken like it.
        whole = client.post("/api/v1/tenants", json=_doc("whole", resources={"memory": 268435456.0, "pids": 64.0},
                                                         network={"ingress": [80.0]}))
        assert whole.status_code == 201, whole.text
    assert [t.metadata.name for t in web.store.list_tenants().items] == ["whole"]


def test_disk_bandwidth_is_set_patched_and_reset_to_the_template_default(web: Web) -> None:
    with web.client(Role.BILLING) as client:
        created = client.post("/api/v1/tenants", json=_doc("io", resources={"io": "50Mi"}))
        assert created.status_code == 201, created.text
        assert client.get("/api/v1/tenants/io").json()["spec"]["resources"]["io"] == 50 << 20
        faster = client.patch("/api/v1/tenants/io", json={"spec": {"resources": {"io": "200Mi"}}})
        assert faster.status_code == 200 and faster.json()["generation"] == 2, faster.text
        assert any("io=200Mi" in step for step in faster.json()["plan"]), faster.json()["plan"]
        bad = client.patch("/api/v1/tenants/io", json={"spec": {"resources": {"io": "1Ki"}}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "spec.resources.io", bad.text
        reset = client.patch("/api/v1/tenants/io", json={"spec": {"resources": {"io": None}}})
        assert reset.status_code == 200 and reset.json()["generation"] == 3, reset.text
        assert reset.json()["tenant"]["spec"]["resources"]["io"] is None
    desired = web.store.desired("io")
    assert desired is not None and desired.spec is not None and desired.spec.resources.io == 100 << 20


def test_a_malformed_body_or_patch_gets_422_and_the_tenant_is_unchanged(web: Web) -> None:
    with web.client() as client:
        response = client.post("/api/v1/tenants", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["error"]["rule"] == "is not valid JSON"
        assert client.post("/api/v1/tenants", json=_doc("keep")).status_code == 201
        bad = client.patch("/api/v1/tenants/keep", json={"spec": {"resources": {"cpu": "-1"}}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "spec.resources.cpu", bad.text
        assert client.get("/api/v1/tenants/keep").json()["metadata"]["generation"] == 1
        assert client.get("/api/v1/tenants", params={"limit": 0}).json()["error"]["field"] == "limit"


def test_dry_run_returns_the_plan_and_writes_nothing(web: Web) -> None:
    with web.client() as client:
        response = client.post("/api/v1/tenants", params={"dry_run": "true"}, json=_doc("dry"))
        assert response.status_code == 200, response.text
        assert response.json()["dry_run"] is True
        assert response.json()["plan"] == ["clone from template base@1", "apply resources cpu=500m memory=256Mi "
                                           "disk=1Gi pids=256 io=100Mi", "start the container",
                                           "apply network (ingress ports 80)"]
        assert client.get("/api/v1/tenants/dry").status_code == 404
    assert web.store.current_revision() == 0


def test_the_same_idempotency_key_and_body_create_one_tenant_and_another_body_is_409(web: Web) -> None:
    key = {"idempotency-key": str(uuid.uuid4())}
    with web.client(Role.BILLING) as client:
        first = client.post("/api/v1/tenants", json=_doc("once"), headers=key)
        again = client.post("/api/v1/tenants", json=_doc("once"), headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        other = client.post("/api/v1/tenants", json=_doc("other"), headers=key)
        assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
    assert [t.metadata.name for t in web.store.list_tenants().items] == ["once"]


def test_templates_plans_nodes_and_events_are_readable(web: Web) -> None:
    web.plan("price_basic", memory="128Mi")
    with web.client(Role.VIEWER) as client:
        assert [t["name"] for t in client.get("/api/v1/templates").json()] == ["base"]
        plans = client.get("/api/v1/plans").json()
        assert plans[0]["id"] == "price_basic" and plans[0]["resources"]["memory"] == 128 << 20
        assert client.get("/api/v1/plans/price_nope").status_code == 404
        assert client.get("/api/v1/nodes").status_code == 200
        assert client.get("/api/v1/events").json() == []
    with web.client() as operator:
        bad = operator.put("/api/v1/plans/price_x", json={"id": "price_x", "template": "Not_A_Name"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "template"
        elsewhere = operator.put("/api/v1/plans/price_x", json={"id": "price_y", "template": "base"})
        assert elsewhere.status_code == 409 and elsewhere.json()["error"]["field"] == "id", elsewhere.text
        assert operator.delete("/api/v1/plans/price_basic").status_code == 204
    assert web.access.list_plans() == []


def test_a_token_revoked_by_another_process_is_refused_within_about_a_second(web: Web) -> None:
    with web.client(Role.BILLING) as billing:
        assert billing.get("/api/v1/tenants").status_code == 200  # remembered by the API from now on
        other = Store(web.store.url)  # what `fleet token revoke` opens: another Access, another process
        try:
            Access(other).revoke_token("t-billing")
        finally:
            other.close()
        wait_for(lambda: billing.get("/api/v1/tenants").status_code == 401, timeout=2.0,
                 what="the revoked token to be refused")


def test_concurrent_creates_of_one_name_make_one_tenant_and_the_others_get_409(web: Web) -> None:
    start = threading.Barrier(6)
    codes: list[int] = []

    def create() -> None:
        with web.client(Role.BILLING) as client:
            start.wait()
            codes.append(client.post("/api/v1/tenants", json=_doc("contested")).status_code)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201, 409, 409, 409, 409, 409]
    assert [t.metadata.name for t in web.store.list_tenants().items] == ["contested"]


def test_creates_written_together_fail_only_where_they_are_wrong(web: Web) -> None:
    documents = [_doc(f"batch-{n}") for n in range(8)] + [_doc("batch-bad", template="nope"), _doc("batch-0")]
    start = threading.Barrier(len(documents))
    answers: dict[int, tuple[int, str]] = {}

    def create(index: int) -> None:
        with web.client(Role.BILLING) as client:
            start.wait()
            response = client.post("/api/v1/tenants", json=documents[index])
            answers[index] = (response.status_code, response.text)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(documents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = [answers[i][0] for i in range(len(documents))]
    assert codes[8] == 409 and "unknown template 'nope'" in answers[8][1]
    assert sorted([codes[0], codes[9]]) == [201, 409], "the same name twice: one is created"
    assert codes[1:8] == [201] * 7
    assert sorted(t.metadata.name for t in web.store.list_tenants().items) == [f"batch-{n}" for n in range(8)]

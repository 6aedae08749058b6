import pytest
from pydantic import ValidationError

from reconciler.documents import describe_validation
from specs import Resources, Tenant, format_bytes, format_cpu, parse_bytes, parse_cpu


@pytest.mark.parametrize(
    ("text", "millicores"), [("500m", 500), ("1", 1000), ("1.5", 1500), (2, 2000), (0.25, 250), ("0.001", 1)]
)
def test_cpu_is_read_as_cores_or_millicores(text: str | int | float, millicores: int) -> None:
    assert parse_cpu(text) == millicores


@pytest.mark.parametrize(("text", "size"), [("256Mi", 256 << 20), ("1Gi", 1 << 30), ("4096", 4096), (1024, 1024)])
def test_sizes_take_binary_suffixes(text: str | int, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["256M", "1GB", "-1", "lots", "1.5Gi", ""])
def test_ambiguous_or_malformed_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="binary suffixes"):
        parse_bytes(text)


def test_quantities_format_back_to_what_people_write() -> None:
    assert format_bytes(256 << 20) == "256Mi"
    assert format_cpu(500) == "500m"
    assert format_cpu(2000) == "2"


def _error(document: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as info:
        Tenant.model_validate(document)
    return describe_validation(info.value)


def test_a_bad_name_is_refused_naming_the_field_and_the_rule() -> None:
    message = _error({"metadata": {"name": "Acme_Corp"}, "spec": {"template": "base"}})
    assert message.startswith("metadata.name: must be a DNS label")


def test_an_unknown_field_is_refused_not_ignored() -> None:
    message = _error({"metadata": {"name": "acme"}, "spec": {"template": "base", "memroy": "1Gi"}})
    assert message == "spec.memroy: unknown field"


def test_memory_below_the_floor_names_the_bounds() -> None:
    message = _error({"metadata": {"name": "acme"}, "spec": {"template": "base", "resources": {"memory": "1Mi"}}})
    assert message == "spec.resources.memory: must be between 16Mi and 1Ti"


def test_ports_out_of_range_are_refused() -> None:
    message = _error({"metadata": {"name": "acme"}, "spec": {"template": "base", "network": {"ingress": [0]}}})
    assert message.startswith("spec.network.ingress: ports must be whole numbers from 1 to 65535")


def test_unset_resources_inherit_the_template_defaults() -> None:
    own = Resources.model_validate({"memory": "1Gi"})
    defaults = Resources.model_validate({"cpu": "500m", "memory": "256Mi", "disk": "1Gi", "pids": 256, "io": "100Mi"})
    filled = own.filled_from(defaults)
    assert (filled.cpu, filled.memory, filled.disk, filled.pids, filled.io) == (500, 1 << 30, 1 << 30, 256, 100 << 20)


def test_disk_bandwidth_is_a_size_per_second_and_shows_as_written() -> None:
    resources = Resources.model_validate({"io": "50Mi"})
    assert resources.io == 50 << 20 and resources.display()["io"] == "50Mi"
    assert Resources.model_validate({"io": 1 << 20}).io == 1 << 20
    assert Resources().io is None, "unset: the template's default"


@pytest.mark.parametrize(
    ("io", "rule"),
    [
        ("10Ki", "must be between 1Mi and 1Ti"),
        ("2Ti", "must be between 1Mi and 1Ti"),
        ("50MB", "must be a size like 256Mi"),
        (True, "must be a size like 256Mi"),
    ],
)
def test_disk_bandwidth_out_of_bounds_or_malformed_names_the_field(io: object, rule: str) -> None:
    message = _error({"metadata": {"name": "acme"}, "spec": {"template": "base", "resources": {"io": io}}})
    assert message.startswith(f"spec.resources.io: {rule}")


def test_cpu_survives_a_json_round_trip_as_millicores() -> None:
    resources = Resources.model_validate({"cpu": "250m"})
    assert Resources.model_validate_json(resources.model_dump_json()).cpu == 250


def test_memory_must_be_whole_pages_or_it_would_drift_forever() -> None:
    message = _error({"metadata": {"name": "acme"}, "spec": {"template": "base", "resources": {"memory": 100000000}}})
    assert message == "spec.resources.memory: must be a whole number of 4Ki pages, e.g. 256Mi or 1536Mi"

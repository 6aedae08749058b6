import importlib

import pytest


@pytest.mark.parametrize("package", ["specs", "state", "drivers"])
def test_every_listed_public_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []

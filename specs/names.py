"""Names are DNS labels: they are also used as paths, interface and cgroup names, so they stay safe."""

import re

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NAME_RULE = "must be a DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
_NAME = re.compile(NAME_PATTERN)


def validate_name(value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(NAME_RULE)
    return value

"""Quantities as people write them ("500m" cpu, "256Mi" memory) and as the store keeps them (base units).

CPU is kept in millicores, memory and disk in bytes. Only binary suffixes are accepted for bytes: "256M"
is ambiguous (10^6 or 2^20?) and is refused with a message that says what to write instead.
"""

import re

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_BYTES = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti)?$")
_CPU_MILLI = re.compile(r"^([0-9]+)m$")
_CPU_CORES = re.compile(r"^([0-9]+)(\.[0-9]{1,3})?$")


def parse_bytes(value: str | int) -> int:
    """'256Mi' -> 268435456; a plain integer is bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 256Mi or 1Gi (binary suffixes Ki, Mi, Gi, Ti)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        match = _BYTES.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _BINARY.get(match.group(2) or "", 1)
    raise ValueError("must be a size like 256Mi or 1Gi (binary suffixes Ki, Mi, Gi, Ti)")


def parse_cpu(value: str | int | float) -> int:
    """'500m' -> 500, '1.5' -> 1500, 2 -> 2000 (millicores)."""
    if isinstance(value, bool):
        raise ValueError("must be cores (1, 0.5) or millicores (500m)")
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, float):
        millis = round(value * 1000)
        if abs(millis - value * 1000) > 1e-6:
            raise ValueError("must be a whole number of millicores (at most 3 decimals)")
        return millis
    if isinstance(value, str):
        text = value.strip()
        milli = _CPU_MILLI.fullmatch(text)
        if milli:
            return int(milli.group(1))
        cores = _CPU_CORES.fullmatch(text)
        if cores:
            fraction = (cores.group(2) or ".")[1:].ljust(3, "0")
            return int(cores.group(1)) * 1000 + int(fraction)
    raise ValueError("must be cores (1, 0.5) or millicores (500m)")


def format_bytes(value: int) -> str:
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def format_cpu(millicores: int) -> str:
    if millicores % 1000 == 0:
        return str(millicores // 1000)
    return f"{millicores}m"

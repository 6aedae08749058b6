"""Quantities as people write them ("500m" cpu, "256Mi" memory) and as the store keeps them (base units).

CPU is kept in millicores, memory and disk in bytes. Only binary suffixes are accepted for bytes: "256M"
is ambiguous (10^6 or 2^20?) and is refused with a message that says what to write instead.
"""

import math
import re

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_BYTES = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti)?$")
_CPU_MILLI = re.compile(r"^([0-9]+)m$")
_CPU_CORES = re.compile(r"^([0-9]+)(\.[0-9]{1,3})?$")


def parse_bytes(value: str | int | float) -> int:
    """'256Mi' -> 268435456; a plain integer is bytes (1024.0 too: JSON does not tell them apart)."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 256Mi or 1Gi (binary suffixes Ki, Mi, Gi, Ti)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
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
        exact = value * 1000
        if not math.isfinite(exact):  # JSON's 1e400 is infinity, and 1e308 cores are as many millicores
            raise ValueError("must be cores (1, 0.5) or millicores (500m)")
        millis = round(exact)
        if abs(millis - exact) > 1e-6:
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


# The same rules as JSON Schema patterns, for the API's OpenAPI document: a generated client then refuses
# exactly what the parsers above refuse (bounds included), rather than learning it from a 422.


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"


def _digit(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _same_width(low: str, high: str) -> list[str]:
    """Digit strings of one width from `low` to `high` (leading zeros are digits like any other)."""
    if low == high:
        return [low]
    if len(low) == 1:
        return [_digit(int(low), int(high))]
    if low[0] == high[0]:
        return [low[0] + _group(_same_width(low[1:], high[1:]))]
    rest = len(low) - 1
    parts, first, last = [], int(low[0]), int(high[0])
    if low[1:] != "0" * rest:
        parts.append(low[0] + _group(_same_width(low[1:], "9" * rest)))
        first += 1
    tail = high[1:] != "9" * rest
    if tail:
        last -= 1
    if first <= last:
        parts.append(_digit(first, last) + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    if tail:
        parts.append(high[0] + _group(_same_width("0" * rest, high[1:])))
    return parts


def integer_pattern(low: int, high: int, *, step: int = 1) -> str:
    """An unanchored pattern for the multiples of `step` from `low` to `high` (1 <= low) in decimal, with
    any number of leading zeros, as `int()` reads them. `step` must divide 100 (it is checked on the last
    two digits), and then `low` must be at least 100."""
    if not 1 <= low <= high:
        raise ValueError("integer_pattern needs 1 <= low <= high")
    if step != 1:
        if 100 % step or low < 100:
            raise ValueError("integer_pattern needs a step that divides 100, and low >= 100 with it")

        def endings(first: int, last: int) -> str:
            return _group([f"{n:02d}" for n in range(first, last + 1) if n % step == 0])

        (head_low, tail_low), (head_high, tail_high) = divmod(low, 100), divmod(high, 100)
        if head_low == head_high:
            return f"0*{head_low}{endings(tail_low, tail_high)}"
        parts = [f"{head_low}{endings(tail_low, 99)}"]
        if head_low + 1 <= head_high - 1:
            parts.append(integer_pattern(head_low + 1, head_high - 1).removeprefix("0*") + endings(0, 99))
        parts.append(f"{head_high}{endings(0, tail_high)}")
        return f"0*{_group(parts)}"
    parts = []
    for width in range(len(str(low)), len(str(high)) + 1):
        first = str(low) if width == len(str(low)) else "1" + "0" * (width - 1)
        last = str(high) if width == len(str(high)) else "9" * width
        parts += _same_width(first, last)
    return f"0*{_group(parts)}"


def bytes_pattern(low: int, high: int, *, multiple_of: int = 1) -> str:
    """The sizes `parse_bytes` reads from a string, from `low` to `high` bytes and a multiple of
    `multiple_of` (a power of two up to 4Ki), as a JSON Schema pattern. A plain number of bytes in a
    string is left out when `multiple_of` > 1: no pattern of a sane size says "a multiple of 4096"."""
    forms = []
    for suffix, unit in (("", 1), *_BINARY.items()):
        if suffix == "" and multiple_of > 1:
            continue
        step = max(1, multiple_of // unit)
        first, last = -(-low // unit), high // unit
        first += -first % step
        if first <= last:
            forms.append(integer_pattern(first, last, step=step) + suffix)
    return f"^{_group(forms)}$"


def cpu_pattern(low: int, high: int) -> str:
    """The CPU quantities `parse_cpu` reads from a string ("500m", "2", "0.25"), from `low` to `high`
    millicores (1000 <= high), as a JSON Schema pattern."""
    cores_low, fraction_low = divmod(low, 1000)
    cores_high, fraction_high = divmod(high, 1000)

    def fractions(first: int, last: int) -> str:
        """A '.' and 1-3 digits worth `first` to `last` millicores ("5" is 500, "05" is 50); optional when
        `first` is 0."""
        forms = []
        for width in (1, 2, 3):
            scale = 10 ** (3 - width)
            lowest, highest = -(-first // scale), last // scale
            if lowest <= highest:
                forms += _same_width(f"{lowest:0{width}d}", f"{highest:0{width}d}")
        return rf"(?:\.{_group(forms)})" + ("?" if first == 0 else "")

    def whole(cores: int) -> str:
        return "0+" if cores == 0 else f"0*{cores}"

    forms = [integer_pattern(low, high) + "m"]
    if cores_low == cores_high:
        forms.append(whole(cores_low) + fractions(fraction_low, fraction_high))
    else:
        forms.append(whole(cores_low) + fractions(fraction_low, 999))
        if cores_low + 1 <= cores_high - 1:
            forms.append(integer_pattern(cores_low + 1, cores_high - 1) + fractions(0, 999))
        forms.append(whole(cores_high) + fractions(0, fraction_high))
    return f"^{_group(forms)}$"

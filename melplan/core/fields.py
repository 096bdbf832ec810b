"""Field checks shared by the YAML file parsers (cluster, services): one error paragraph per field.

Each check raises the parser's own :class:`~melplan.core.errors.InputError` subclass naming the file,
the field and the fix, so every file kind refuses bad input the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, NoReturn, overload

from melplan.core.errors import InputError

MAX_MAGNITUDE = 1e9  # no memory, speed, rate, latency, weight or time in these files is larger


class FieldChecker:
    """``fail``, ``mapping`` and ``number`` for one file, raising ``error`` with ``file=source``."""

    def __init__(self, error: type[InputError], source: str | None) -> None:
        self.error = error
        self.source = source

    def fail(self, fld: str, message: str, fix: str) -> NoReturn:
        raise self.error(message, file=self.source, field=fld, fix=fix)

    def mapping(self, value: Any, fld: str, allowed: set[str]) -> Mapping[str, Any]:
        """``value`` as a mapping whose keys are all in ``allowed``."""
        if not isinstance(value, Mapping):
            self.fail(fld, f"expected a mapping, got {type(value).__name__}", "write it as 'key: value' lines")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            self.fail(
                f"{fld}.{unknown[0]}" if fld else unknown[0],
                f"unknown key(s) {unknown}",
                f"remove them or use one of: {', '.join(sorted(allowed))}",
            )
        return value

    @overload
    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        fld: str,
        *,
        low: float,
        low_open: bool = False,
        high: float | None = None,
        high_open: bool = False,
        required: Literal[True] = True,
    ) -> float: ...

    @overload
    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        fld: str,
        *,
        low: float,
        low_open: bool = False,
        high: float | None = None,
        high_open: bool = False,
        required: bool,
    ) -> float | None: ...

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        fld: str,
        *,
        low: float,
        low_open: bool = False,
        high: float | None = None,
        high_open: bool = False,
        required: bool = True,
    ) -> float | None:
        """``obj[key]`` as a finite float within the bounds (None when absent and not required)."""
        if key not in obj or obj[key] is None:
            if required:
                self.fail(f"{fld}.{key}", "missing", f"add '{key}'")
            return None
        v = obj[key]
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (isinstance(v, int) and abs(v) > MAX_MAGNITUDE)
            or not math.isfinite(v)
            or abs(v) > MAX_MAGNITUDE
        ):
            shown = f"an integer of {len(str(abs(v)))} digits" if isinstance(v, int) and abs(v) > 1e18 else repr(v)
            self.fail(
                f"{fld}.{key}",
                f"expected a finite number of magnitude at most {MAX_MAGNITUDE:g}, got {shown}",
                f"set '{key}' to a number",
            )
        bad_low = v <= low if low_open else v < low
        bad_high = high is not None and (v >= high if high_open else v > high)
        if bad_low or bad_high:
            lo = f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
            self.fail(f"{fld}.{key}", f"must be {lo}{hi}, got {v!r}", f"set '{key}' to a value {lo}{hi}")
        return float(v)

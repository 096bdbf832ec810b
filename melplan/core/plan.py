"""The plan file (schema ``melplan.plan/v1``): what ``melplan plan`` writes and others read (no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from melplan.core.errors import PlanFileError
from melplan.core.fileio import atomic_write_json

PLAN_SCHEMA = "melplan.plan/v1"
_KNOWN = {
    "schema",
    "family",
    "placement",
    "objective",
    "expected_accuracy",
    "accuracy_all_up",
    "worst_case_accuracy",
    "fallback",
    "solver",
    "servers",
    "latency_ms",
}


@dataclass(frozen=True)
class Plan:
    family: str
    placement: Mapping[str, tuple[str, ...]]
    objective: str
    expected_accuracy: float
    accuracy_all_up: float
    worst_case_accuracy: Mapping[str, float]
    fallback: tuple[Mapping[str, Any], ...] = ()
    solver: Mapping[str, Any] = field(default_factory=dict)
    servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def used_servers(self) -> list[str]:
        return list(dict.fromkeys(s for v in self.placement.values() for s in v))

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": PLAN_SCHEMA,
            "family": self.family,
            "placement": {k: list(v) for k, v in self.placement.items()},
            "objective": self.objective,
            "expected_accuracy": self.expected_accuracy,
            "accuracy_all_up": self.accuracy_all_up,
            "worst_case_accuracy": dict(self.worst_case_accuracy),
            "fallback": [dict(f) for f in self.fallback],
            "solver": dict(self.solver),
            "servers": {k: dict(v) for k, v in self.servers.items()},
            "latency_ms": dict(self.latency_ms),
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "Plan":
        def fail(fld: str, msg: str, fix: str) -> None:
            raise PlanFileError(msg, file=source, field=fld, fix=fix)

        if not isinstance(data, Mapping):
            fail("(top level)", "expected a JSON object", "pass a plan written by `melplan plan --out`")
        if data.get("schema") != PLAN_SCHEMA:
            fail("schema", f"unsupported schema {data.get('schema')!r}", f'use a plan with schema "{PLAN_SCHEMA}"')
        for key in ("family", "placement"):
            if key not in data:
                fail(key, "missing", "regenerate the plan with `melplan plan --out plan.json`")
        placement = data["placement"]
        if not isinstance(placement, Mapping) or not placement:
            fail("placement", "expected a non-empty object of component -> [servers]", "regenerate the plan")
        for k, v in placement.items():
            if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
                fail(f"placement.{k}", f"expected a non-empty list of server names, got {v!r}", "list server names")
        return cls(
            family=str(data["family"]),
            placement={k: tuple(v) for k, v in placement.items()},
            objective=str(data.get("objective", "expected")),
            expected_accuracy=float(data.get("expected_accuracy", 0.0)),
            accuracy_all_up=float(data.get("accuracy_all_up", 0.0)),
            worst_case_accuracy={str(k): float(v) for k, v in (data.get("worst_case_accuracy") or {}).items()},
            fallback=tuple(data.get("fallback") or ()),
            solver=dict(data.get("solver") or {}),
            servers=dict(data.get("servers") or {}),
            latency_ms=dict(data.get("latency_ms") or {}),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
        )

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())


def load_plan(path: str | os.PathLike, *, service: str | None = None) -> Plan:
    """Read a plan file; for a site plan (``melplan plan --services``), the plan of ``service``
    (see melplan.core.siteplan).  Raises PlanFileError naming the file, the field and the fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(
            f"cannot read the file ({exc.strerror})",
            file=str(path),
            fix="write one with `melplan plan --servers cluster.yaml --out plan.json`",
        ) from None
    except json.JSONDecodeError as exc:
        raise PlanFileError(
            f"not valid JSON (line {exc.lineno}: {exc.msg})",
            file=str(path),
            fix="regenerate it with `melplan plan --out`",
        ) from None
    from melplan.core.siteplan import is_site_plan, service_plan

    if is_site_plan(data):
        return service_plan(data, service, source=str(path))
    if service is not None:
        raise PlanFileError(
            f"--service {service} given, but this is a single-service plan",
            file=str(path),
            field="--service",
            fix="drop --service, or pass a site plan written by `melplan plan --services`",
        )
    return Plan.from_dict(data, source=str(path))

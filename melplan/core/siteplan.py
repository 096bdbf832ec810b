"""The site plan file (schema ``melplan.site-plan/v1``): one plan for several services (no torch).

``melplan plan --services services.yaml --out plan.json`` writes it.  Its ``services`` object holds,
per service, an ordinary single-service plan (schema ``melplan.plan/v1``, DESIGN §4) plus the
service's name, weight and workload; ``servers`` holds the per-server totals over all services and
``solver`` the proof of the joint search (value, bound, gap).  ``service_plan`` turns one service
back into a :class:`~melplan.core.plan.Plan`, so every command that reads a plan reads a site plan
with ``--service NAME`` (``melplan.core.plan.load_plan(path, service=NAME)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melplan.core.errors import PlanFileError

SITE_SCHEMA = "melplan.site-plan/v1"


def is_site_plan(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("schema") == SITE_SCHEMA


def service_names(data: Mapping[str, Any]) -> list[str]:
    services = data.get("services")
    return list(services) if isinstance(services, Mapping) else []


def service_plan(data: Mapping[str, Any], service: str | None, *, source: str | None = None):
    """The :class:`Plan` of ``service`` in a parsed site plan (the only one when ``service`` is None
    and the site has one service).  Raises PlanFileError naming the field and the fix."""
    from melplan.core.plan import Plan

    services = data.get("services")
    if not isinstance(services, Mapping) or not services:
        raise PlanFileError(
            "expected a non-empty object of service name -> plan",
            file=source,
            field="services",
            fix="regenerate it with `melplan plan --services services.yaml --out plan.json`",
        )
    names = list(services)
    if service is None:
        if len(names) == 1:
            service = names[0]
        else:
            raise PlanFileError(
                f"this is a site plan with {len(names)} services ({', '.join(names)})",
                file=source,
                field="--service",
                fix=f"pick one with --service (e.g. --service {names[0]})",
            )
    if service not in services:
        raise PlanFileError(
            f"no service named {service!r} in the site plan",
            file=source,
            field="--service",
            fix=f"use one of: {', '.join(names)}",
        )
    return Plan.from_dict(services[service], source=f"{source} (service {service})" if source else None)

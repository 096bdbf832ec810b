"""The plan file: what ``melplan plan`` writes and everything downstream reads (no torch).

Schema ``melplan.plan/v2`` (docs/plan-file.md) is *self-sufficient*: besides the placement and its
exact accuracies it embeds the family entry it placed (``family_entry``, the catalog JSON as it was),
the cluster it was solved for (``cluster``), and where the family's weights file was with its
SHA-256 (``weights``), so ``select``, ``simulate``, ``export`` and ``serve`` need only the plan.
``melplan.plan/v1`` files (no embedded data) still load; :func:`load_plan_bundle` then falls back to a
catalog and a cluster file, and says so clearly when they are missing.

``Plan.family`` stays the family *id* (a string), as in v1; the embedded entry is ``Plan.family_entry``
(a :class:`~melplan.core.catalog.Family`) and the embedded cluster ``Plan.cluster``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from melplan.core.catalog import Catalog, Family, load_catalog
from melplan.core.cluster import Cluster, load_cluster, parse_cluster
from melplan.core.errors import CatalogError, ClusterError, PlanFileError
from melplan.core.fileio import atomic_write_json, sha256_file

PLAN_SCHEMA = "melplan.plan/v2"
PLAN_SCHEMA_V1 = "melplan.plan/v1"
PLAN_SCHEMAS = (PLAN_SCHEMA_V1, PLAN_SCHEMA)
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
    "family_entry",
    "cluster",
    "weights",
    "catalog_dir",
}


@lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file, cached by (path, mtime, size): re-plans in a simulation re-embed the same weights."""
    return sha256_file(path)


@dataclass(frozen=True)
class WeightsRef:
    """Where the embedded family's weights file was when the plan was made, and its digest.

    ``file``: the name the family entry gives (relative to the folder of its catalog JSON);
    ``path``: the absolute path it had at plan time; ``sha256``/``size_bytes``: its digest and size
    (``None`` when the file was missing at plan time); ``relative_path``: the path from the plan
    file's folder, written by :meth:`Plan.save` (``None`` in memory or when on another drive).
    """

    file: str
    path: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    relative_path: str | None = None

    @classmethod
    def of(cls, family: Family) -> WeightsRef | None:
        """The weights of a catalog family (digest computed now); ``None`` when it names none."""
        if not family.weights:
            return None
        if not family.source:
            return cls(family.weights)
        path = (Path(family.source).parent / family.weights).resolve()
        try:
            st = path.stat()
        except OSError:
            return cls(family.weights, str(path))
        if not path.is_file():
            return cls(family.weights, str(path))
        return cls(family.weights, str(path), _digest(str(path), st.st_mtime_ns, st.st_size), st.st_size)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "sha256": self.sha256, "size_bytes": self.size_bytes}
        d["path"] = self.path
        if self.relative_path is not None:
            d["relative_path"] = self.relative_path
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> WeightsRef:
        if not isinstance(data, Mapping) or not isinstance(data.get("file"), str) or not data["file"]:
            raise PlanFileError(
                "expected an object with a 'file' name",
                file=source,
                field="weights",
                fix="regenerate the plan with `melplan plan --out plan.json`",
            )
        for key in ("path", "sha256", "relative_path"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise PlanFileError(
                    f"expected a string, got {data[key]!r}",
                    file=source,
                    field=f"weights.{key}",
                    fix="regenerate the plan",
                )
        size = data.get("size_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise PlanFileError(
                f"expected a whole number >= 0, got {size!r}",
                file=source,
                field="weights.size_bytes",
                fix="regenerate the plan",
            )
        return cls(data["file"], data.get("path"), data.get("sha256"), size, data.get("relative_path"))

    def candidates(self, plan_dir: Path | None) -> list[Path]:
        """Where to look, in order: relative to the plan (moved together with its catalog), beside the
        plan (copied next to it, or in ``weights/`` next to it), the absolute path of plan time."""
        out: list[Path] = []
        name = Path(self.file).name
        if plan_dir is not None:
            if self.relative_path:
                out.append(plan_dir / self.relative_path)
            out += [plan_dir / name, plan_dir / "weights" / name]
        if self.path:
            out.append(Path(self.path))
        return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Plan:
    """A placement of one family on a cluster, with its exact accuracies.

    ``family`` is the family id.  ``family_entry``, ``cluster``, ``weights`` and ``catalog_dir`` are
    what a v2 plan embeds (``None`` for a v1 file or a plan built in memory without them).
    """

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
    family_entry: Family | None = None
    cluster: Cluster | None = None
    weights: WeightsRef | None = None
    catalog_dir: str | None = None
    schema: str = field(default=PLAN_SCHEMA, compare=False)

    def __post_init__(self) -> None:
        if self.family_entry is not None and self.family_entry.id != self.family:
            raise PlanFileError(
                f"the embedded family entry is '{self.family_entry.id}' but the plan places '{self.family}'",
                field="family_entry.id",
                fix="regenerate the plan with `melplan plan --out plan.json`",
            )

    @property
    def used_servers(self) -> list[str]:
        return list(dict.fromkeys(s for v in self.placement.values() for s in v))

    @property
    def self_sufficient(self) -> bool:
        """True when the plan embeds both its family entry and its cluster."""
        return self.family_entry is not None and self.cluster is not None

    def embed(self, family: Family, cluster: Cluster, *, catalog_dir: str | os.PathLike | None = None) -> Plan:
        """This plan with ``family`` (its weights digested now) and ``cluster`` embedded."""
        if catalog_dir is None and family.source:
            catalog_dir = Path(family.source).parent
        return replace(
            self,
            family_entry=replace(family, source=None),
            cluster=cluster,
            weights=WeightsRef.of(family),
            catalog_dir=None if catalog_dir is None else str(Path(catalog_dir).resolve()),
            schema=PLAN_SCHEMA,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
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
        if self.family_entry is not None:
            d["family_entry"] = self.family_entry.to_dict()
        if self.weights is not None:
            d["weights"] = self.weights.to_dict()
        if self.cluster is not None:
            d["cluster"] = self.cluster.to_dict()
        if self.catalog_dir is not None:
            d["catalog_dir"] = self.catalog_dir
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Plan:
        """Validate and build a plan from a v1 or v2 document; raises :class:`PlanFileError`."""

        def fail(fld: str, msg: str, fix: str) -> None:
            raise PlanFileError(msg, file=source, field=fld, fix=fix)

        if not isinstance(data, Mapping):
            fail("(top level)", "expected a JSON object", "pass a plan written by `melplan plan --out`")
        schema = data.get("schema")
        if schema not in PLAN_SCHEMAS:
            fail(
                "schema",
                f"unsupported schema {schema!r}",
                f"use a plan with schema {' or '.join(map(repr, PLAN_SCHEMAS))} (re-plan with `melplan plan --out`)",
            )
        for key in ("family", "placement"):
            if key not in data:
                fail(key, "missing", "regenerate the plan with `melplan plan --out plan.json`")
        placement = data["placement"]
        if not isinstance(placement, Mapping) or not placement:
            fail("placement", "expected a non-empty object of component -> [servers]", "regenerate the plan")
        for k, v in placement.items():
            if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
                fail(f"placement.{k}", f"expected a non-empty list of server names, got {v!r}", "list server names")
        _check_plan_fields(data, fail)
        family_entry = cluster = weights = None
        catalog_dir = None
        if schema == PLAN_SCHEMA:
            if data.get("family_entry") is not None:
                family_entry = _embedded_family(data["family_entry"], source)
            if data.get("cluster") is not None:
                cluster = _embedded_cluster(data["cluster"], source)
            if data.get("weights") is not None:
                weights = WeightsRef.from_dict(data["weights"], source=source)
            if data.get("catalog_dir") is not None:
                if not isinstance(data["catalog_dir"], str):
                    fail("catalog_dir", "expected a directory path", "regenerate the plan")
                catalog_dir = data["catalog_dir"]
        plan = cls(
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
            family_entry=None,
            cluster=cluster,
            weights=weights,
            catalog_dir=catalog_dir,
            schema=str(schema),
        )
        if family_entry is not None:
            if family_entry.id != plan.family:
                fail(
                    "family_entry.id",
                    f"the embedded family entry is '{family_entry.id}' but the plan places '{plan.family}'",
                    "regenerate the plan with `melplan plan --out plan.json`",
                )
            plan = replace(plan, family_entry=family_entry)
        return plan

    def file_dict(self, path: str | os.PathLike) -> dict[str, Any]:
        """``to_dict()`` as written to ``path``: a weights reference gains its path relative to the
        plan's folder (also used for the per-service plans of a site plan)."""
        d = self.to_dict()
        if self.weights is not None and self.weights.path:
            try:
                rel = os.path.relpath(self.weights.path, Path(path).resolve().parent)
            except ValueError:  # another drive (Windows)
                rel = None
            if rel is not None:
                d["weights"]["relative_path"] = Path(rel).as_posix()
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan atomically; a weights reference gains its path relative to the plan's folder."""
        return atomic_write_json(path, self.file_dict(path), strict=True)


def _is_number(v: Any, low: float = -1e15, high: float = 1e15) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and low <= v <= high


def _check_plan_fields(data: Mapping[str, Any], fail: Any) -> None:
    """Types and ranges of the fields every consumer reads; raises through ``fail(field, msg, fix)``."""
    fix = "regenerate the plan with `melplan plan --out plan.json` (or repair this field)"
    if not isinstance(data["family"], str) or not data["family"]:
        fail("family", f"expected a family id, got {data['family']!r}"[:200], fix)
    if "objective" in data and not isinstance(data["objective"], str):
        fail("objective", f"expected a string, got {data['objective']!r}"[:200], fix)
    for key in ("expected_accuracy", "accuracy_all_up"):
        if key in data and not _is_number(data[key], 0.0, 1.0):
            fail(key, f"expected an accuracy in [0, 1], got {data[key]!r}"[:200], fix)
    wca = data.get("worst_case_accuracy")
    if wca is not None:
        if not isinstance(wca, Mapping):
            fail("worst_case_accuracy", f"expected an object of k -> accuracy, got {wca!r}"[:200], fix)
        for k, v in wca.items():
            if not _is_number(v, 0.0, 1.0):
                fail(f"worst_case_accuracy.{k}", f"expected an accuracy in [0, 1], got {v!r}"[:200], fix)
    fallback = data.get("fallback")
    if fallback is not None and (not isinstance(fallback, list) or not all(isinstance(x, Mapping) for x in fallback)):
        fail("fallback", f"expected a list of objects, got {fallback!r}"[:200], fix)
    for key in ("solver", "servers", "latency_ms"):
        v = data.get(key)
        if v is not None and not isinstance(v, Mapping):
            fail(key, f"expected an object, got {v!r}"[:200], fix)
    for name, v in (data.get("servers") or {}).items():
        if not isinstance(v, Mapping):
            fail(f"servers.{name}", f"expected an object, got {v!r}"[:200], fix)
    for k, v in (data.get("latency_ms") or {}).items():
        if v is not None and not _is_number(v, 0.0):
            fail(f"latency_ms.{k}", f"expected a latency in ms, got {v!r}"[:200], fix)


def check_plan_rules(plan: Plan, family: Family, cluster: Cluster | None, source: str | None) -> None:
    """A (possibly hand-edited) plan must respect what the planner guarantees: known components on
    known servers, one server per upstream, no two upstreams on one server, memory, compute and the
    latency SLO.  Raises :class:`PlanFileError` naming the first violation."""
    if cluster is None:
        return
    from melplan.core.evaluate import capacity_violations, validate_placement

    validate_placement(family, plan.placement, cluster, source=source)
    problems = capacity_violations(family, plan.placement, cluster)
    if problems:
        raise PlanFileError(
            f"the placement breaks the cluster's limits: {'; '.join(problems[:3])}",
            file=source,
            field="placement",
            fix="re-plan with `melplan plan --out plan.json` instead of editing the placement by hand",
        )


def _embedded_family(data: Any, source: str | None) -> Family:
    try:
        fam = Family.from_dict(data, source=f"{source or 'plan'}, embedded family_entry")
    except CatalogError as exc:
        raise PlanFileError(
            exc.message,
            file=source,
            field=f"family_entry.{exc.field}" if exc.field else "family_entry",
            fix=exc.fix,
        ) from None
    return replace(fam, source=None)


def _embedded_cluster(data: Any, source: str | None) -> Cluster:
    try:
        return parse_cluster(data, source=source)
    except ClusterError as exc:
        raise PlanFileError(
            exc.message,
            file=source,
            field=f"cluster.{exc.field}" if exc.field else "cluster",
            fix=exc.fix,
        ) from None


def read_plan_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a plan file; raises :class:`PlanFileError` when unreadable or not JSON."""
    from melplan.core.fileio import load_json_file

    return load_json_file(
        path, error=PlanFileError, fix="write one with `melplan plan --servers cluster.yaml --out plan.json`"
    )


def load_plan(path: str | os.PathLike, *, service: str | None = None) -> Plan:
    """Read and validate a v1 or v2 plan file; for a site plan (``melplan plan --services``), the plan
    of ``service`` (melplan.core.siteplan).  Raises :class:`PlanFileError`."""
    from melplan.core.siteplan import is_site_plan, service_plan

    data = read_plan_json(path)
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


# -- one loader for plan + family + cluster ----------------------------------------------------


@dataclass(frozen=True)
class PlanBundle:
    """A plan with the family it places, the cluster it was made for and its weights file.

    ``cluster`` is ``None`` only for a v1 plan loaded without a cluster file (see
    :meth:`require_cluster`).  ``catalog`` is the catalog given (or, when asked for with
    ``want_catalog``, the one the plan recorded, if it is still there), else ``None``.
    ``weights_path`` is the weights file found (digest checked) or ``None``; ``weights_tried``
    lists where it was looked for.
    """

    plan: Plan
    family: Family
    cluster: Cluster | None
    source: str
    catalog: Catalog | None = None

    @cached_property
    def _weights(self) -> tuple[Path | None, tuple[str, ...]]:
        return _find_weights(self.plan, self.family, Path(self.source).resolve().parent)

    @property
    def weights_path(self) -> Path | None:
        """The family's weights file, found and digest-checked on first use (``None`` when not found)."""
        return self._weights[0]

    @property
    def weights_tried(self) -> tuple[str, ...]:
        return self._weights[1]

    def require_cluster(self, option: str = "--servers") -> Cluster:
        """The cluster; raises :class:`PlanFileError` for a v1 plan loaded without one."""
        if self.cluster is None:
            raise PlanFileError(
                f"this {self.plan.schema} plan does not embed the cluster it was made for",
                file=self.source,
                field="cluster",
                fix=f"pass {option} cluster.yaml, or re-plan with `melplan plan --out` to get a self-sufficient "
                f"{PLAN_SCHEMA} plan",
            )
        return self.cluster

    def require_weights(self) -> Path:
        """The weights file; raises :class:`PlanFileError` when the family has none or it was not found."""
        w = self.plan.weights
        if self.weights_path is not None:
            return self.weights_path
        if w is None and not self.family.weights:
            raise PlanFileError(
                f"family {self.family.id} names no weights file",
                file=self.source,
                field="weights",
                fix=(
                    "re-plan with `--family ID` naming a family whose catalog entry has a 'weights' file, "
                    "or train this one with `melplan train --save-weights` and re-plan"
                ),
            )
        digest = f" with sha256 {w.sha256}" if w is not None and w.sha256 else ""
        raise PlanFileError(
            f"the weights file of {self.family.id}{digest} was not found (looked in: "
            + (", ".join(self.weights_tried) or "nowhere: the plan records no location")
            + ")",
            file=self.source,
            field="weights",
            fix="keep plan.json and its catalog together, copy the weights file next to the plan, or pass --catalog",
        )


def load_plan_bundle(
    plan_path: str | os.PathLike,
    *,
    catalog_dir: str | os.PathLike | None = None,
    cluster_path: str | os.PathLike | None = None,
    want_catalog: bool = False,
    service: str | None = None,
) -> PlanBundle:
    """Load a plan with its family, cluster and weights: the one loader of ``select``, ``simulate``,
    ``export`` and ``serve``.

    A v2 plan needs nothing else.  A ``catalog_dir`` or ``cluster_path`` given anyway must agree
    with what the plan embeds (else :class:`PlanFileError` naming both files and what differs).  A v1
    plan takes its family from ``catalog_dir`` (or the default catalog) and its cluster from
    ``cluster_path`` (else ``cluster`` is ``None``).  ``want_catalog``: also load the catalog the plan
    was made from (recorded in the plan) when no ``catalog_dir`` is given, if it still exists (for
    baselines and re-plans that may switch family).  ``service``: the service to load from a site plan
    (``melplan plan --services``); each service is an ordinary plan there.  Raises :class:`PlanFileError`,
    :class:`CatalogError` or :class:`ClusterError` for bad files.
    """
    source = str(plan_path)
    plan = load_plan(plan_path, service=service)
    catalog: Catalog | None = None
    if catalog_dir is not None or plan.family_entry is None:
        catalog = load_catalog(catalog_dir)
    family = _agreeing_family(plan, catalog, source)
    if catalog is None and want_catalog and plan.catalog_dir and Path(plan.catalog_dir).is_dir():
        try:
            catalog = load_catalog(plan.catalog_dir)
        except CatalogError:
            catalog = None
    cluster = plan.cluster
    if cluster_path is not None:
        given = load_cluster(cluster_path)
        if cluster is not None:
            _check_cluster_agrees(cluster, given, source, str(cluster_path))
        cluster = given
    check_plan_rules(plan, family, cluster, source)
    return PlanBundle(plan, family, cluster, source, catalog)


def _agreeing_family(plan: Plan, catalog: Catalog | None, source: str) -> Family:
    embedded = plan.family_entry
    if catalog is None and embedded is not None:
        return embedded
    if catalog is None:
        catalog = load_catalog(None)
    found = next((f for f in catalog if f.id == plan.family), None)
    if found is None:
        known = ", ".join(catalog.ids()[:8]) + (" ..." if len(catalog) > 8 else "")
        if embedded is not None:
            raise PlanFileError(
                f"the plan embeds family '{plan.family}' but the catalog {catalog.root} has no family with that id",
                file=source,
                field="--catalog",
                fix="drop --catalog (the plan carries its family), or pass the catalog the plan was made from",
            )
        raise PlanFileError(
            f"family '{plan.family}' is not in the catalog {catalog.root}, and this {plan.schema} plan does not "
            f"embed its family (it holds: {known})",
            file=source,
            field="family",
            fix=f"pass --catalog with the catalog the plan was made from, or re-plan to get a self-sufficient "
            f"{PLAN_SCHEMA} plan",
        )
    if embedded is not None:
        a, b = embedded.to_dict(), found.to_dict()
        if a != b:
            differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise PlanFileError(
                f"family '{plan.family}' in {found.source or catalog.root} differs from the one embedded in the plan "
                f"(fields: {', '.join(differ)})",
                file=source,
                field="--catalog",
                fix="drop --catalog to use the family the plan was made with, or re-plan with this catalog",
            )
    return found


def _check_cluster_agrees(embedded: Cluster, given: Cluster, source: str, given_path: str) -> None:
    a, b = embedded.to_dict(), given.to_dict()
    if a == b:
        return
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    detail = ""
    if "servers" in differ:
        sa = {s["name"]: s for s in a.get("servers", [])}
        sb = {s["name"]: s for s in b.get("servers", [])}
        names = sorted(n for n in set(sa) | set(sb) if sa.get(n) != sb.get(n))
        detail = f"; servers that differ: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")
    raise PlanFileError(
        f"the cluster file {given_path} differs from the cluster embedded in the plan (fields: {', '.join(differ)}"
        f"{detail})",
        file=source,
        field="--servers",
        fix="drop --servers to use the cluster the plan was made for, or re-plan with "
        f"`melplan plan --servers {given_path} --out plan.json`",
    )


def _find_weights(plan: Plan, family: Family, plan_dir: Path) -> tuple[Path | None, tuple[str, ...]]:
    """The first candidate weights file whose digest matches the plan's (any existing one when the plan
    recorded no digest), after the catalog's own copy when the family came from a catalog."""
    ref = plan.weights
    cands: list[Path] = []
    if family.source and family.weights:
        cands.append(Path(family.source).parent / family.weights)
    if ref is not None:
        cands += ref.candidates(plan_dir)
    cands = list(dict.fromkeys(cands))
    for c in cands:
        if not c.is_file():
            continue
        if ref is None or ref.sha256 is None:
            return c, tuple(map(str, cands))
        try:
            if sha256_file(c) == ref.sha256:
                return c, tuple(map(str, cands))
        except OSError:
            continue
    return None, tuple(map(str, cands))

"""The services file: several services on one edge site (DESIGN §9; no torch).

A services file names a cluster and the services that share it::

    cluster: cluster.yaml                 # relative to this file
    services:
      - name: sorter
        catalog: ../catalog/fashion-mnist  # relative to this file
        workload: {rate_rps: 50, latency_slo_ms: 50}   # default: the cluster's workload
        weight: 2                          # default 1
        min_accuracy: 0.88                 # optional floor on the exact expected accuracy
      - {name: digits, catalog: ../catalog/fashion-mnist, families: [fmnist-lite0pt-b5-s0], weight: 1}

``dataset`` picks one dataset of a catalog that holds several; ``families`` keeps only the listed
families of the catalog (a service that may only run some models).  Every path is resolved
against the directory of the services file.  Unknown keys are errors, like in the cluster file.

``load_site(path)`` returns a :class:`Site`; each :class:`Service` carries its own
:class:`~melplan.core.cluster.Cluster` (the site's servers with the service's workload), so the
single-service planner and evaluator apply to it unchanged.  Raises
:class:`~melplan.core.errors.InputError` (``ServicesError``) naming the file, the field and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from melplan.core.catalog import Catalog, load_catalog
from melplan.core.cluster import Cluster, Workload, load_cluster
from melplan.core.errors import ServicesError
from melplan.core.fields import FieldChecker

SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
SERVICES_SCHEMA_KEYS = {"cluster", "services"}
SERVICE_KEYS = {"name", "catalog", "dataset", "families", "workload", "weight", "min_accuracy"}


@dataclass(frozen=True)
class Service:
    """One service of a site: what it may run, how much traffic, how much it matters."""

    name: str
    catalog: Catalog
    catalog_path: str  # as resolved (relative to the working directory when the file's was)
    cluster: Cluster  # the site's servers with this service's workload
    weight: float = 1.0
    min_accuracy: float | None = None  # floor on the exact expected accuracy
    dataset: str | None = None

    @property
    def workload(self) -> Workload:
        return self.cluster.workload

    def to_dict(self) -> dict[str, Any]:
        w: dict[str, Any] = {"rate_rps": self.workload.rate_rps}
        if self.workload.latency_slo_ms is not None:
            w["latency_slo_ms"] = self.workload.latency_slo_ms
        d: dict[str, Any] = {
            "name": self.name,
            "catalog": self.catalog_path,
            "families": [f.id for f in self.catalog],
            "workload": w,
            "weight": self.weight,
            "min_accuracy": self.min_accuracy,
        }
        if self.dataset is not None:
            d["dataset"] = self.dataset
        return d


@dataclass(frozen=True)
class Site:
    """A cluster and the services placed on it together."""

    cluster: Cluster
    services: tuple[Service, ...]
    source: str | None = None
    cluster_path: str | None = None

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise ServicesError(
            f"no service named '{name}'",
            file=self.source,
            field="services",
            fix=f"use one of: {', '.join(s.name for s in self.services)}",
        )

    @property
    def total_weight(self) -> float:
        return sum(s.weight for s in self.services)


def with_workload(cluster: Cluster, workload: Workload) -> Cluster:
    """The same cluster with another workload, sharing the all-pairs path cache (links are equal)."""
    out = replace(cluster, workload=workload)
    out.__dict__["_path_cache"] = cluster._path_cache  # cached_property storage: same servers and links
    return out


def load_site(path: str | os.PathLike) -> Site:
    """Read and validate a services file and everything it names (cluster, catalogs); the YAML is
    read with the bounds of :func:`melplan.core.fileio.load_yaml_file`."""
    from melplan.core.fileio import load_yaml_file

    path = Path(path)
    src = str(path)
    data = load_yaml_file(path, error=ServicesError, fix="check the path given to --services")
    return parse_site(data, base=path.parent, source=src)


def parse_site(data: Any, *, base: str | os.PathLike = ".", source: str | None = None) -> Site:
    """Validate parsed YAML; paths are resolved against ``base``. Raises ServicesError."""
    base = Path(base)

    check = FieldChecker(ServicesError, source)
    fail, mapping, number = check.fail, check.mapping, check.number

    def resolve(value: Any, fld: str, what: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            fail(fld, f"expected a path to the {what}, got {value!r}", f"give the {what}'s path relative to this file")
        p = Path(value)
        return p if p.is_absolute() else base / p

    if data is None:
        fail("services", "the file is empty", "add 'cluster: cluster.yaml' and a 'services:' list")
    top = mapping(data, "", SERVICES_SCHEMA_KEYS)
    if "cluster" not in top:
        fail("cluster", "missing", "add 'cluster: cluster.yaml' (the site's cluster file, relative to this file)")
    cluster_path = resolve(top["cluster"], "cluster", "cluster file")
    cluster = load_cluster(cluster_path)
    raw = top.get("services")
    if not isinstance(raw, list) or not raw:
        fail("services", "expected a non-empty list of services", "add 'services:' with one '- name: ...' per service")
    services: list[Service] = []
    seen: set[str] = set()
    catalogs: dict[tuple[str, str | None], Catalog] = {}
    for i, s in enumerate(raw):
        fld = f"services[{i}]"
        s = mapping(s, fld, SERVICE_KEYS)
        name = s.get("name")
        if not isinstance(name, str) or not SERVICE_NAME_RE.match(name):
            fail(
                f"{fld}.name",
                f"invalid service name {name!r}",
                "use 1-63 lower-case letters, digits, '_' or '-', starting and ending with a letter or digit",
            )
        if name in seen:
            fail(f"{fld}.name", f"duplicate service name '{name}'", "give every service a unique name")
        seen.add(name)
        fld = f"services[{i}] ({name})"
        if "catalog" not in s:
            fail(f"{fld}.catalog", "missing", "add 'catalog: <directory of family JSON files>' relative to this file")
        cat_path = resolve(s["catalog"], f"{fld}.catalog", "catalog directory")
        dataset = s.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            fail(f"{fld}.dataset", f"expected a dataset name, got {dataset!r}", "give e.g. 'dataset: fashion-mnist'")
        key = (str(cat_path), dataset)
        if key not in catalogs:
            if not cat_path.exists():
                fail(
                    f"{fld}.catalog",
                    f"the catalog directory {str(cat_path)!r} does not exist",
                    "give a catalog directory relative to the services file",
                )
            catalogs[key] = load_catalog(cat_path, dataset=dataset)
        catalog = catalogs[key]
        names = sorted({str(f.dataset.get("name")) for f in catalog})
        if len(names) > 1:
            fail(
                f"{fld}.dataset",
                f"the catalog holds families of several datasets ({', '.join(names)})",
                f"add 'dataset: {names[0]}' (or another of them)",
            )
        if "families" in s:
            wanted = s["families"]
            if not isinstance(wanted, list) or not wanted or not all(isinstance(x, str) for x in wanted):
                fail(f"{fld}.families", f"expected a non-empty list of family ids, got {wanted!r}", "list family ids")
            unknown = [x for x in wanted if x not in catalog.ids()]
            if unknown:
                fail(
                    f"{fld}.families",
                    f"unknown family id(s) {unknown} in {catalog.root}",
                    f"use ids from the catalog: {', '.join(catalog.ids()[:6])}" + (" ..." if len(catalog) > 6 else ""),
                )
            catalog = Catalog(tuple(f for f in catalog if f.id in set(wanted)), catalog.root)
        workload = cluster.workload
        if s.get("workload") is not None:
            w = mapping(s["workload"], f"{fld}.workload", {"rate_rps", "latency_slo_ms"})
            if "rate_rps" not in w:
                fail(f"{fld}.workload.rate_rps", "missing", "add 'rate_rps' (requests per second)")
            slo = None
            if w.get("latency_slo_ms") is not None:
                slo = number(w, "latency_slo_ms", f"{fld}.workload", low=0, low_open=True)
            workload = Workload(number(w, "rate_rps", f"{fld}.workload", low=0, low_open=True), slo)
        weight = 1.0
        if s.get("weight") is not None:
            weight = number(s, "weight", fld, low=0, low_open=True)
        floor = None
        if s.get("min_accuracy") is not None:
            floor = number(s, "min_accuracy", fld, low=0, high=1)
        services.append(
            Service(
                name,
                catalog,
                os.path.normpath(str(cat_path)),
                with_workload(cluster, workload),
                weight,
                floor,
                dataset,
            )
        )
    return Site(cluster, tuple(services), source, os.path.normpath(str(cluster_path)))

"""melplan: plan, run and check MEL (Multi-level Ensemble Learning) deployments on edge servers.

The planning core (catalog, cluster, evaluate, ilp, solve, selector) imports without torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["RuntimeSelector", "load_catalog", "load_cluster", "load_plan", "load_plan_bundle", "__version__"]


def __getattr__(name: str):
    if name == "RuntimeSelector":
        from melplan.runtime.selector import RuntimeSelector

        return RuntimeSelector
    if name == "load_catalog":
        from melplan.core.catalog import load_catalog

        return load_catalog
    if name == "load_cluster":
        from melplan.core.cluster import load_cluster

        return load_cluster
    if name == "load_plan":
        from melplan.core.plan import load_plan

        return load_plan
    if name == "load_plan_bundle":
        from melplan.core.plan import load_plan_bundle

        return load_plan_bundle
    raise AttributeError(f"module 'melplan' has no attribute {name!r}")

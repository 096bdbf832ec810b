"""``melplan export``: write deployable manifests (JSON, YAML, Kubernetes) for a plan."""

from __future__ import annotations

import click

from melplan.commands.common import (
    FiniteFloat,
    check_writable,
    echo_json,
    json_option,
    plan_catalog_option,
    plan_option,
    service_option,
    table,
)


@click.command("export")
@plan_option
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["json", "yaml", "k8s"]),
    help="json/yaml: the deployable view (manifest.json / manifest.yaml); k8s: Deployments, "
    "Services, a ConfigMap and a kustomization.yaml.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory (created when missing)."
)
@plan_catalog_option
@click.option(
    "--image", default=None, help="k8s: container image of the serving runtime [default: melplan-runtime:latest]."
)
@click.option("--namespace", default=None, help="k8s: namespace set on every object and in the kustomization.")
@click.option(
    "--overhead-mib",
    type=FiniteFloat(0.0),
    default=None,
    help="k8s: MiB added to each component's catalog memory (weights + activations) for its "
    "memory request: the serving process itself [default: the measured 717].",
)
@service_option
@json_option
def export(
    plan_path: str,
    fmt: str,
    out_dir: str,
    catalog_dir: str | None,
    image: str | None,
    namespace: str | None,
    overhead_mib: float | None,
    service: str | None,
    as_json: bool,
) -> None:
    """Write what to run on each server for PLAN: a JSON or YAML manifest, or Kubernetes objects.

    \b
    Examples:
      melplan export --plan plan.json --format yaml --out deploy/
      melplan export --plan plan.json --format k8s --out deploy/ --namespace mel --overhead-mib 300
      kubectl apply -k deploy/
    """
    from melplan.deploy.export import export_plan
    from melplan.deploy.k8s import DEFAULT_IMAGE, RUNTIME_OVERHEAD_MIB, K8sOptions

    options = None
    if image is not None or namespace is not None or overhead_mib is not None:
        if fmt != "k8s":
            raise click.UsageError("--image, --namespace and --overhead-mib apply only to --format k8s.")
        options = K8sOptions(
            image=image if image is not None else DEFAULT_IMAGE,
            namespace=namespace,
            overhead_mib=RUNTIME_OVERHEAD_MIB if overhead_mib is None else overhead_mib,
        )
    check_writable(out_dir, "--out", directory=True)
    result = export_plan(plan_path, fmt, out_dir, catalog_dir=catalog_dir, k8s=options, service=service)
    for w in result.warnings:
        click.echo(f"Warning: {w}", err=True)
    if as_json:
        echo_json(
            {
                "format": result.format,
                "out": str(result.out_dir),
                "files": [str(p) for p in result.files],
                "removed": [str(p) for p in result.removed],
                "warnings": list(result.warnings),
                "objects": [{"kind": o["kind"], "name": o["metadata"]["name"]} for o in result.objects],
            }
        )
        return
    m = result.manifest
    acc = m["accuracy"]
    click.echo(
        f"Family {m['family']['id']}: expected accuracy {acc['expected']:.4f}, "
        f"all up {acc['all_up']:.4f} ({m['plan']['objective']} objective)."
    )
    if fmt == "k8s":
        rows = []
        for o in result.objects:
            if o["kind"] != "Deployment":
                continue
            ann = o["metadata"]["annotations"]
            pod = o["spec"]["template"]["spec"]
            req = pod["containers"][0]["resources"]["requests"]["memory"]
            ingress = (
                pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
            )
            where = ingress["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0] if ingress else "any"
            rows.append(
                [
                    o["metadata"]["name"],
                    ann.get("melplan/component", "-"),
                    o["metadata"]["labels"]["melplan/kind"],
                    ann.get("melplan/server", where),
                    req,
                ]
            )
        click.echo(table(rows, ["deployment", "component", "kind", "server", "memory request"]))
        opts = options or K8sOptions()
        click.echo(
            f"Memory requests: (catalog memory + {opts.overhead_mib:g} MiB runtime overhead, --overhead-mib) "
            f"x {1 + opts.memory_margin:g}; the gateway {opts.gateway_mib:g} MiB x {1 + opts.memory_margin:g}."
        )
    else:
        rows = [
            [s["name"], ", ".join(c["component"] for c in s["components"]), s["memory_mib"], s["macs"]]
            for s in m["servers"]
        ]
        click.echo(table(rows, ["server", "components", "memory MiB", "MACs/sample"], align="llrr"))
    w = m["weights"]
    if w is None:
        click.echo("Weights: the catalog entry names no weights file.")
    elif w["found"]:
        click.echo(f"Weights: {w['file']} sha256 {w['sha256']}")
    click.echo(
        f"Wrote {len(result.files)} file(s) to {result.out_dir}"
        + (f", removed {len(result.removed)} stale file(s)" if result.removed else "")
        + "."
    )
    if fmt == "k8s":
        click.echo(f"Image: {(options or K8sOptions()).image} (build it with the Dockerfile, see docs/export.md).")
        click.echo(f"Apply with: kubectl apply -k {result.out_dir}")

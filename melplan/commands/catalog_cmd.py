"""`melplan catalog list|show|check`."""

from __future__ import annotations

import click

from melplan.commands.common import catalog_option, echo_json, json_option, table


@click.group()
def catalog() -> None:
    """List, show and check the families of a catalog."""


@catalog.command("list")
@catalog_option
@click.option("--dataset", default=None, help="Only families trained on this dataset.")
@json_option
def list_(catalog_dir, dataset, as_json):
    """One line per family: shape, training epochs, size against the reference, accuracy all-up and of the
    weakest single."""
    from melplan.core.catalog import family_row, lambda_label, load_catalog

    cat = load_catalog(catalog_dir, dataset=dataset)
    rows = [family_row(f) for f in cat]
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{len(rows)} families in {cat.root}\n")
    click.echo(
        table(
            [
                [
                    r["id"],
                    f.extra.get("role", "-"),
                    r["n_upstreams"],
                    r["blocks"],
                    r["combiner"],
                    lambda_label(f, by_size=f.n >= 4),  # 15 or 31 weights: one per subset size
                    "-" if r["epochs"] is None else r["epochs"],
                    f"{r['params'] / 1e6:.3f}M",
                    "-" if r["params_vs_ref"] != r["params_vs_ref"] else f"{r['params_vs_ref']:.0%}",
                    f"{r['acc_all_up']:.4f}",
                    f"{r['acc_weakest_single']:.4f}",
                ]
                for r, f in zip(rows, cat)
            ],
            [
                "id",
                "role",
                "n",
                "blocks",
                "combiner",
                "lambdas",
                "epochs",
                "params",
                "vs ref",
                "acc all-up",
                "weakest single",
            ],
            align="lllrllrrrrr",
        )
    )


@catalog.command("show")
@click.argument("family_id")
@catalog_option
@json_option
def show(family_id, catalog_dir, as_json):
    """Every measured number of one family: components and the accuracy of every subset."""
    from melplan.core.catalog import load_catalog

    fam = load_catalog(catalog_dir).get(family_id)
    if as_json:
        echo_json(fam.to_dict())
        return
    ref = fam.reference or {}
    click.echo(f"{fam.id}  ({fam.extra.get('role', 'mel')}, base {fam.base}, dataset {fam.dataset.get('name')})")
    lam = fam.training.get("lambdas")
    click.echo(
        f"training: {fam.training.get('epochs')} epochs + {fam.training.get('finetune_epochs', 0)} fine-tune, "
        f"seed {fam.training.get('seed')}, lambdas {lam}"
    )
    click.echo(
        f"total: {fam.params:,} params"
        + (f" ({fam.params / ref['params']:.1%} of reference {ref.get('id')})" if ref.get("params") else "")
        + f", {fam.macs:,} MACs all-up, {fam.weight_bytes / 2**20:.2f} MiB weights\n"
    )
    comps = [
        [
            u.name,
            "upstream",
            u.blocks,
            u.params,
            u.macs,
            f"{u.memory_bytes / 2**20:.2f}",
            u.feature_bytes,
            u.latency_ms.get("cpu", ""),
        ]
        for u in fam.upstreams
    ]
    comps += [
        [
            c.name,
            f"combiner ({c.kind or '-'})",
            "",
            c.params,
            c.macs,
            f"{c.memory_bytes / 2**20:.2f}",
            "",
            c.latency_ms.get("cpu", ""),
        ]
        for c in fam.combiners
    ]
    click.echo(
        table(
            comps,
            ["component", "kind", "blocks", "params", "MACs", "memory MiB", "feature B", "cpu ms"],
            align="llrrrrrr",
        )
    )
    click.echo("")
    acc = [[k, f"{v:.4f}", f"{v / fam.accuracy_all_up:.1%}"] for k, v in fam.accuracy.items()]
    click.echo(table(acc, ["answering subset", "accuracy", "of all-up"], align="lrr"))
    if ref.get("accuracy") is not None:
        click.echo(f"\nreference {ref.get('id')}: accuracy {ref['accuracy']:.4f}, {ref.get('params', 0):,} params")
    skipped = fam.extra.get("measurement", {}).get("fvcore_skipped_ops")
    if skipped:
        click.echo(f"fvcore skipped (not counted in MACs): {', '.join(f'{k} x{v}' for k, v in skipped.items())}")


@catalog.command("check")
@catalog_option
def check(catalog_dir):
    """Validate every file of a catalog; exit 2 with the first problem found."""
    from melplan.core.catalog import load_catalog

    cat = load_catalog(catalog_dir)
    click.echo(f"ok: {len(cat)} families in {cat.root}")


@catalog.command("report")
@catalog_option
@click.option("--dataset", default=None, help="Only families trained on this dataset.")
@click.option(
    "--reference",
    "reference_id",
    default=None,
    help="Family to use as the reference (default: the one with role 'reference').",
)
def report(catalog_dir, dataset, reference_id):
    """Check a catalog against the MEL paper's headline claims (40% params, 1 point, 95.6%; pairs 98%),
    after checking that the reference is converged (more accurate than every smaller single model);
    compare independently trained controls with their jointly trained twins and shared with
    per-subset combiners."""
    from melplan.core.catalog import load_catalog
    from melplan.core.catalog_checks import (
        control_vs_joint,
        convergence,
        headline,
        pairs,
        references,
        shared_vs_per_subset,
    )

    cat = load_catalog(catalog_dir, dataset=dataset)
    click.echo(f"{len(cat)} families in {cat.root}\n")
    refs = [cat.get(reference_id)] if reference_id else references(cat)
    checks = []
    for ref_id in [r.id for r in refs] or [None]:
        checks += [convergence(cat, ref_id), headline(cat, ref_id)]
    for check in checks + [pairs(cat)]:
        click.echo(f"[{'PASS' if check.passed else 'FAIL'}] {check.name}: {check.family or '-'}\n       {check.detail}")
    for title, rows, empty in (
        (
            "independently trained controls against their jointly trained twins:",
            control_vs_joint(cat),
            "(no independently trained family in this catalog)",
        ),
        (
            "shared combiner against per-subset combiners:",
            shared_vs_per_subset(cat),
            "(no shared-combiner family with a per-subset twin in this catalog)",
        ),
    ):
        click.echo(f"\n{title}")
        for r in rows or [empty]:
            click.echo(f"  {r}")

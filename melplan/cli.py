"""The ``melplan`` command line: a thin click layer over the library.

Subcommands live in ``melplan/commands/<module>.py`` and are imported only when run, so
``melplan plan`` never pays for torch or matplotlib.  Errors from the core (``MelplanError``)
become one paragraph on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import importlib

import click

from melplan import __version__
from melplan.core.errors import MelplanError

# name -> (module under melplan.commands, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "catalog": ("catalog_cmd", "catalog", "List and show the families of a catalog."),
    "train": ("train_cmd", "train", "Train a MEL family (or a single model) and write its catalog entry."),
    "sweep": ("train_cmd", "sweep", "Train every family of a sweep file (reproduces the shipped catalog)."),
    "pareto": ("pareto_cmd", "pareto", "Non-dominated families of a catalog, hypervolume, plot and pick."),
    "search": ("search_cmd", "search", "NSGA-II search over sizes and lambdas that trains each candidate."),
    "plan": ("plan_cmd", "plan", "Choose a family and place it on a cluster to maximise accuracy under failures."),
    "cluster": ("cluster_cmd", "cluster", "Check or generate cluster files."),
    "select": ("select_cmd", "select", "Show the route that answers when some servers are down."),
    "simulate": ("simulate_cmd", "simulate", "Replay failures against a plan and the usual baselines."),
    "export": ("export_cmd", "export", "Write deployable manifests (JSON, YAML, Kubernetes) for a plan."),
    "serve": ("serve_cmd", "serve", "Serve a plan: component processes and an Open Inference Protocol gateway."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"melplan.commands.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MelplanError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version=__version__, prog_name="melplan")
def main() -> None:
    """melplan: plan, run and check Multi-level Ensemble Learning (MEL) deployments on edge servers
    that fail.

    Typical flow: `melplan catalog list` (what is trained), `melplan pareto` (which families are
    worth it), `melplan plan --servers cluster.yaml --out plan.json` (where to run them),
    `melplan simulate --plan plan.json` (what failures cost), `melplan serve --plan plan.json`
    (run it for real), `melplan export --plan plan.json --format k8s --out deploy/` (manifests).
    A plan embeds its family and cluster, so the commands after `plan` need only `--plan`.
    """


def run() -> None:  # console-script entry point
    main(prog_name="melplan")


if __name__ == "__main__":  # pragma: no cover
    run()

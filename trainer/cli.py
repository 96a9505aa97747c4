"""`pslider-train` command line."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Not available yet: lands with its own issue."""
    raise click.ClickException("pslider-train is not implemented yet in this version of pareto-slider.")

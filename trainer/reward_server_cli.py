"""`pslider-reward-server`: serve rewards over HTTP so heavy judges run on their own GPU."""

from __future__ import annotations

import logging

import click

from pslider_core.formats import TORCH_DTYPES
from pslider_core.rewards.limits import LOOPBACK_HOSTS, MAX_BODY_BYTES, MAX_CONCURRENT, READ_TIMEOUT

# torch and the rewards are imported once the options are parsed: --help and option errors answer at once


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pareto-slider")
@click.option(
    "--rewards",
    required=True,
    help="Comma-separated reward specs, e.g. 'pickscore_photorealism,clip_style(style=a pencil sketch)'.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. Anything but loopback exposes the server without authentication.",
)
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0 picks a free one)."
)
@click.option(
    "--device",
    default=None,
    help="Torch device for the reward models, e.g. cuda:1 (default: cuda if available, else cpu).",
)
@click.option("--dtype", type=click.Choice(TORCH_DTYPES), default="float32", show_default=True, help="Model dtype.")
@click.option(
    "--preload/--no-preload",
    default=True,
    show_default=True,
    help="Load every model before serving so errors show at once.",
)
@click.option(
    "--max-body-mb",
    default=MAX_BODY_BYTES / 2**20,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Largest request body in MiB; larger ones get 413 unread (remote: clients split batches to fit).",
)
@click.option(
    "--read-timeout",
    default=READ_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a client may go without sending a byte before its connection is dropped (408).",
)
@click.option(
    "--max-concurrent",
    default=MAX_CONCURRENT,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests read and scored at once; more get 503 (clients retry). Memory is at most this x --max-body-mb.",
)
def main(
    rewards: str,
    host: str,
    port: int,
    device: str | None,
    dtype: str,
    preload: bool,
    max_body_mb: float,
    read_timeout: float,
    max_concurrent: int,
) -> None:
    """Serve REWARDS at http://HOST:PORT (GET /rewards, POST /score/<reward>); clients use remote:<url>#<reward>."""
    import torch

    from pslider_core.rewards import get_reward, parse_reward_list
    from pslider_core.rewards.server import RewardServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        served = [get_reward(spec, device=device, dtype=getattr(torch, dtype)) for spec in parse_reward_list(rewards)]
    except (KeyError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--rewards") from exc
    if preload:
        for reward in served:
            reward.load()
    if host not in LOOPBACK_HOSTS:
        click.echo(f"WARNING: serving on {host} without authentication; anyone who can reach it can use it.", err=True)
    server = RewardServer(
        served,
        host=host,
        port=port,
        max_body_bytes=int(max_body_mb * 2**20),
        read_timeout=read_timeout,
        max_concurrent=max_concurrent,
    )
    click.echo(f"serving {', '.join(r.name for r in served)} on {server.url}")
    click.echo(
        f"limits: bodies up to {max_body_mb:g} MiB, {read_timeout:g} s read timeout, {max_concurrent} requests in flight"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

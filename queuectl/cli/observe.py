"""The observe commands (`metrics`, `web`), loaded only when one of them runs.

Kept apart from cli/app.py, which registers them: same rules (parse, call the
core, print). prometheus_client and Flask are imported inside the commands,
so no other command pays for them at start-up.
"""

from __future__ import annotations

import os

import click

from .. import lazylog

log = lazylog.get("queuectl.cli.observe")


@click.command()
@click.option("--textfile", "textfile", type=click.Path(file_okay=False),
              help="Write DIR/queuectl.prom atomically (node_exporter's textfile collector) "
                   "instead of printing.")
@click.pass_obj
def metrics(obj, textfile):
    """Print the queue's metrics in the Prometheus text format.

    Jobs per state and queue; finished jobs, attempts and retries per queue
    (counters that never go down, kept across clean and retention); run-time
    and queue-wait histograms; per queue the wait of the oldest job that
    could run, scheduled and blocked jobs, paused and limit; live and busy
    workers per node; rejected drop-ins.

    \b
    Examples:
      queuectl metrics
      queuectl metrics --textfile /var/lib/node_exporter/textfile_collector
    """
    from ..metrics import render, write_textfile
    spool = obj.synced()
    if textfile:
        if not os.path.isdir(textfile):
            raise click.ClickException(f"no directory {textfile}")
        write_textfile(spool, textfile)
        return
    click.echo(render(spool).decode("utf-8"), nl=False)


@click.command()
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8040, show_default=True,
              help="TCP port (0: any free port, printed at start).")
@click.option("--token", envvar="QUEUECTL_WEB_TOKEN", metavar="T",
              help="Require this token on every request [env QUEUECTL_WEB_TOKEN].")
@click.option("--allow-actions", is_flag=True,
              help="Allow actions from the dashboard: cancel, hold, release, priority, kill, requeue, "
                   "delete, dlq retry/purge all, pause/resume (POST + CSRF).")
@click.pass_obj
def web(obj, bind, port, token, allow_actions):
    """Serve a dashboard of the queue over HTTP until Ctrl-C.

    Pages: overview with queues, jobs per state and across states (search,
    sort), each job with its log, dead letters, rejected drop-ins, /metrics,
    and /api/... JSON of every page. Read-only unless --allow-actions. Without a
    token it listens on loopback only; with one, every request must carry
    it (`Authorization: Bearer T`, or `?token=T` once, which sets a cookie).

    \b
    Examples:
      queuectl web                      # http://127.0.0.1:8040/
      QUEUECTL_WEB_TOKEN=$(openssl rand -hex 16) queuectl web --bind 0.0.0.0
    """
    from ..web import check_bind, serve
    check_bind(bind, token)  # before touching the spool or the port
    spool = obj.synced()
    mode = "actions allowed" if allow_actions else "read-only"

    def ready(url: str) -> None:
        click.echo(f"serving {spool.root} on {url} ({mode}{', token required' if token else ''})")

    root = spool.root
    obj.close()  # the server opens the index per request and per thread
    serve(root, bind=bind, port=port, token=token, allow_actions=allow_actions, ready=ready)

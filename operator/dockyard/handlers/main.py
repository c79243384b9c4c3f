"""Run the operator: kopf settings, the metrics endpoint, and the handler modules."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine, Sequence
from typing import Any

import kopf

from dockyard.api.policy import DEFAULT_ALLOWED_HOST_PATHS, Level, Policy, parse_level

# Importing the handler modules registers their handlers with kopf (probing and shard are
# helpers used here).
from dockyard.handlers import deployment, disk, job, probing, series, shard, snapshot  # noqa: F401
from dockyard.handlers.fleet import Fleet
from dockyard.handlers.leadership import Leadership
from dockyard.observability import metrics
from dockyard.planning.lease import LeaseTimings

# kopf refuses to start with admission handlers but no webhook server: the admission module
# (which registers on import) is loaded only when the webhook is configured.
WEBHOOK = bool(os.environ.get("DOCKYARD_WEBHOOK_PORT"))

log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # What Jobs share (providers, action pools, the board of upstreams), in the operator's
    # memo: every object's memo is a shallow copy of it.
    memo.setdefault(
        "fleet", Fleet(pool_sizes(os.environ.get("DOCKYARD_POOL_SIZES", "")), policy_from_env())
    )
    # Everything kopf keeps goes to annotations under our prefix; our status is ours alone.
    settings.persistence.finalizer = shard.finalizer()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dockyard.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dockyard.dev", key="last-handled-configuration"
    )
    # A watch that stays silent this long is re-established (kopf's "deaf operator" failure).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = 360
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 16
    if WEBHOOK:
        from dockyard.handlers import admission

        admission.configure_webhook(settings)


@kopf.on.startup()
async def start_series_sweeper(memo: kopf.Memo, **_: Any) -> None:
    series.start(memo)


@kopf.on.cleanup()
async def stop_series_sweeper(memo: kopf.Memo, **_: Any) -> None:
    series.stop(memo)  # in the loop's own thread: a task is not cancelled from another


@kopf.on.cleanup()
def release(memo: kopf.Memo, **_: Any) -> None:
    fleet = memo.get("fleet")
    if isinstance(fleet, Fleet):
        fleet.close()


def policy_from_env() -> Policy:
    """The operator's policy: DOCKYARD_POLICY (default level) and DOCKYARD_ALLOWED_HOST_PATHS
    (colon-separated prefixes baseline allows), as ``dockyard run`` sets them."""
    try:
        level = parse_level(os.environ.get("DOCKYARD_POLICY", Level.BASELINE.value))
    except ValueError as error:
        raise SystemExit(f"--policy: {error}") from None
    paths = os.environ.get("DOCKYARD_ALLOWED_HOST_PATHS")
    allowed = tuple(p for p in paths.split(":") if p) if paths is not None else None
    for path in allowed or ():
        if not path.startswith("/"):
            raise SystemExit(f"--allowed-host-path {path!r}: must be an absolute path")
    return Policy(level, allowed if allowed is not None else DEFAULT_ALLOWED_HOST_PATHS)


def pool_sizes(text: str) -> dict[str, int]:
    """``local=32,aws=8`` -> actions in flight at once per provider type."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, number = part.partition("=")
        try:
            sizes[kind.strip()] = max(int(number), 1)
        except ValueError:
            raise SystemExit(f"--pool {part!r}: expected TYPE=NUMBER, e.g. local=32") from None
    return sizes


def run_operator(
    metrics_port: int = 9090,
    liveness: str = "http://0.0.0.0:8080/healthz",
    pools: str = "",
    metrics_created: bool = False,
    namespaces: Sequence[str] = (),
    leader_lease: str = "",
    probe_port: int = 0,
    lease_timings: LeaseTimings | None = None,
) -> int:
    """Run until stopped. With ``leader_lease`` (NAMESPACE/NAME) this replica stands by until
    it holds the lease, and exits 1 when it loses it (a restart makes it a standby again)."""
    logging.basicConfig(
        level=os.environ.get("DOCKYARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    shard.selector()  # a selector it cannot read stops it here, not in a handler
    if metrics_port:
        metrics.start_metrics_server(metrics_port, created=metrics_created)
    leadership = None
    if leader_lease:
        lease_namespace, _, lease_name = leader_lease.partition("/")
        if not lease_namespace or not lease_name:
            raise SystemExit(f"--leader-lease {leader_lease!r}: expected NAMESPACE/NAME")
        timings = lease_timings or LeaseTimings()
        leadership = Leadership(lease_namespace, lease_name, timings=timings)
    return asyncio.run(_serve(list(namespaces), liveness, pools, leadership, probe_port))


async def _serve(
    namespaces: list[str],
    liveness: str,
    pools: str,
    leadership: Leadership | None,
    probe_port: int,
) -> int:
    ready = asyncio.Event()
    probes = await probing.serve(probe_port, ready) if probe_port else None
    try:
        if leadership is not None:
            if not await _unless_stopped(leadership.acquire()):
                return 0  # stopped while standing by
        else:
            metrics.set_active(True)
        stop = asyncio.Event()
        fleet = Fleet(
            pool_sizes(pools), policy_from_env(), leadership.holds if leadership else _always
        )
        keeper = asyncio.create_task(_keep(leadership, stop)) if leadership else None
        try:
            await kopf.operator(
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=liveness or None,
                memo=kopf.Memo(fleet=fleet),
                stop_flag=stop,
                ready_flag=ready,
            )
        finally:
            if keeper is not None:
                keeper.cancel()
        if leadership is not None:
            if leadership.lost.is_set():
                return 1
            await asyncio.to_thread(leadership.release)  # a clean stop: a standby goes on now
        return 0
    finally:
        if probes is not None:
            await probes.cleanup()


async def _unless_stopped(waiting: Coroutine[Any, Any, None]) -> bool:
    """Await ``waiting``; False (and it cancelled) if SIGTERM or SIGINT comes first. kopf handles
    them once it runs; before, a standby that is PID 1 in its container (a Pod) would ignore
    SIGTERM and be killed only at the end of its grace period."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        for number in signals:
            loop.add_signal_handler(number, stopped.set)
    except (ValueError, RuntimeError):  # not in the main thread: signals are not ours to handle
        await waiting
        return True
    task = asyncio.ensure_future(waiting)
    stop = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        stop.cancel()
    if task.done():
        task.result()  # its error, if it failed
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    log.info("stopped while standing by")
    return False


def _always() -> bool:
    return True


async def _keep(leadership: Leadership, stop: asyncio.Event) -> None:
    await leadership.keep()
    stop.set()

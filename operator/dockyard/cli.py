"""The ``dockyard`` command: ``dockyard run`` (the operator) and ``dockyard crds`` (CRD YAML)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from dockyard.api.crds import write_crds

    for path in write_crds(Path(args.out)):
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    from dockyard.handlers.main import run_operator

    # The policy reaches the operator (and the webhook it serves) through its environment.
    if args.policy:
        os.environ["DOCKYARD_POLICY"] = args.policy
    if args.allowed_host_path is not None:
        os.environ["DOCKYARD_ALLOWED_HOST_PATHS"] = ":".join(args.allowed_host_path)
    if args.selector is not None:
        os.environ["DOCKYARD_SELECTOR"] = args.selector
    from dockyard.planning.lease import LeaseTimings

    _raise_open_files_limit()
    duration = args.lease_duration
    try:
        timings = LeaseTimings(duration, duration * 2 / 3, duration / 3, min(1.0, duration / 6))
    except ValueError as error:
        raise SystemExit(f"--lease-duration: {error}") from None
    return run_operator(
        metrics_port=args.metrics_port,
        liveness=args.liveness,
        pools=",".join(args.pool),
        metrics_created=args.metrics_created,
        namespaces=args.namespace or (),
        leader_lease=args.leader_lease,
        probe_port=args.probe_port,
        lease_timings=timings,
    )


def _raise_open_files_limit() -> None:
    """Up to the hard limit, as Go programs do: each VM holds ~20 sockets (its engine's client
    and event stream), and the soft limit of many shells (1024) stopped the operator at ~50."""
    import contextlib
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # Above the kernel's nr_open the call fails: what we have is kept.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dockyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="write the CRD YAML generated from the pydantic models")
    crds.add_argument("--out", default="crds", help="directory to write into (default: crds)")
    crds.set_defaults(func=_crds)

    _add_run(
        sub.add_parser("run", help="run the operator against $KUBECONFIG or in-cluster config")
    )

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def _add_run(run: argparse.ArgumentParser) -> None:
    _add_scope(run)
    _add_serving(run)
    run.set_defaults(func=_run)


def _add_scope(run: argparse.ArgumentParser) -> None:
    """What this replica acts on, and when: namespaces, a shard's selector, the leader lease."""
    run.add_argument(
        "--namespace",
        action="append",
        metavar="GLOB",
        help="watch namespaces matching this glob; '!GLOB' leaves some out (repeatable; "
        "default: all namespaces)",
    )
    run.add_argument(
        "--selector",
        default=None,
        help="act only on objects whose labels match this label selector, e.g. "
        "dockyard.dev/shard=a or '!dockyard.dev/shard' (children inherit dockyard.dev/shard "
        "from their Deployment; also DOCKYARD_SELECTOR)",
    )
    run.add_argument(
        "--leader-lease",
        default="",
        metavar="NAMESPACE/NAME",
        help="hot standby: act only while holding this coordination.k8s.io Lease; stand by "
        "otherwise (default: off, one replica)",
    )
    run.add_argument(
        "--lease-duration",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="a standby takes the lease once it saw it unchanged this long; the holder renews "
        "every third of it and stops acting after two thirds without a renewal (default: 6)",
    )
    run.add_argument(
        "--probe-port",
        type=int,
        default=0,
        help="serve /livez (the process runs) and /readyz (active and ready) here (0: off)",
    )


def _add_serving(run: argparse.ArgumentParser) -> None:
    """Its endpoints, action pools and the policy for namespaces without a level."""
    run.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus metrics port (0: off)"
    )
    run.add_argument(
        "--metrics-created",
        action="store_true",
        help="also export the _created series of counters and histograms (off: half the series)",
    )
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf liveness endpoint ('' turns it off)",
    )
    run.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="TYPE=N",
        help="actions in flight at once for a provider type, e.g. local=32 (repeatable; "
        "defaults: local=32, aws=8, gce=8; also DOCKYARD_POOL_SIZES=local=32,aws=8)",
    )
    run.add_argument(
        "--policy",
        choices=["privileged", "baseline", "restricted"],
        help="the level for namespaces without a dockyard.dev/enforce label (default: baseline; "
        "also DOCKYARD_POLICY)",
    )
    run.add_argument(
        "--allowed-host-path",
        action="append",
        metavar="PATH",
        help="a VM directory baseline lets bindVolumes.hostPath use, with what is below it "
        "(repeatable; default: /var/vcap/data; also DOCKYARD_ALLOWED_HOST_PATHS=a:b)",
    )


if __name__ == "__main__":
    sys.exit(main())

"""Dockyard: VMs, persistent disks and stateful Docker containers, kept converged by kopf."""

__version__ = "0.1.0"

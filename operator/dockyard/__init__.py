"""Dockyard: VMs, persistent disks and stateful Docker containers, kept converged by a kopf operator."""

__version__ = "0.1.0"

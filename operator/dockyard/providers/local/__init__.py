"""The local provider: VMs are containers of the stemcell running their own Docker engine; disks
are ext4 filesystems in sparse files on loop devices, mounted under a shared folder that every VM
sees (rslave), so a disk can move between VMs and outlive them.

Everything is rediscoverable: VMs by Docker labels, disks by a JSON sidecar next to the image.
"""

from dockyard.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]

"""pvezfsha: make a Proxmox container's local ZFS datasets follow it across nodes."""

__version__ = "0.1.0"

"""Logical-machine backends: one module per way of running a machine (libvirt VMs first)."""

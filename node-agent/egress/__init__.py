"""The per-sandbox egress proxy: secrets that never enter the VM (docs/networking.md)."""

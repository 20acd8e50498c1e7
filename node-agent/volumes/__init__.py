"""Sandbox volumes on the node: bind directories, named volumes, tmpfs (``prepare``)."""

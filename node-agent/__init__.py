"""The kubesandbox node agent: images, layer cache, rootfs, QEMU microVMs, the agent relay."""

"""Helpers shared by test suites: test images, fake guests, registries."""

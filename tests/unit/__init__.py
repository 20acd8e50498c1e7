"""Unit tests: fast, no cluster, no VM."""

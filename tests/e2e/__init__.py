"""End to end: the whole system as `make up` runs it, driven through the Kubernetes API."""

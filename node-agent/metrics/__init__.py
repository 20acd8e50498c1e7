"""Per-sandbox resource metrics sampled on the host (``sampler``) and the Prometheus text
endpoint's rendering (``prometheus``)."""

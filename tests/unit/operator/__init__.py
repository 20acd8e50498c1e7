"""The operator's pure decisions, without a cluster."""

"""Pure decisions: no I/O, no clock of their own, unit-tested without a cluster."""

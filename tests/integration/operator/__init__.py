"""The operator process against the real control plane, with a fake node agent."""

"""Writing the node agent's part of ``Sandbox.status`` back to the cluster (``writer``)."""

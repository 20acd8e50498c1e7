"""Everything the operator says to the outside: the apiserver and the node agents."""

"""The node agent's one boundary to the Kubernetes API: ``client`` (aiohttp, kubeconfig or
in-cluster credentials, errors mapped once), ``auth`` (TokenReview + SubjectAccessReview with
a small cache), ``lease`` (the per-node Lease renewer)."""

"""The CRD on a real kube-apiserver: what it refuses, what it accepts, what it documents."""

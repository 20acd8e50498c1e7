"""Images on the node: references, registry client, blob store, layer cache, pinning.

Reading order: ``reference`` (what a user wrote) → ``registry`` (talks to a registry, with
``auth``) → ``manifest`` (which manifest a reference means on linux/amd64) → ``blobs`` (verified,
single-flight downloads) → ``unpack`` (hostile layer tars) → ``layers`` (one EROFS image per
layer) → ``pins`` (what each sandbox resolved to) → ``service`` (all of it behind one call).
"""

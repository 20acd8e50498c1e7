"""Per-sandbox root filesystems: the writable layer, patches, scripts, disk and bind roots.

Reading order: ``lower`` (the image's layers as one tree, from the layer indexes) → ``view``
(the merged view overlayfs will show, and safe path resolution in it) → ``patches`` (the
``spec.patches`` operations and scripts on that view) → ``writable`` (the staging directory
becomes a sparse ext4 image) → ``disk`` and ``hostpaths`` (the other two root sources) →
``assemble`` (one call per sandbox that returns what to boot).
"""

"""``python -m kubesandbox_node``: see ``kubesandbox_node.main``."""

from kubesandbox_node.main import main

raise SystemExit(main())

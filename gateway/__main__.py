"""``python -m kubesandbox_gateway``: see ``kubesandbox_gateway.main``."""

from kubesandbox_gateway.main import main

raise SystemExit(main())

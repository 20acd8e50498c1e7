"""``python -m kubesandbox_operator``: the same as the ``kubesandbox-operator`` command."""

import sys

from kubesandbox_operator.main import main

sys.exit(main())

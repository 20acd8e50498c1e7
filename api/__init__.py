"""The ``Sandbox`` API (group ``kubesandbox.dev``, version ``v1alpha1``) as pydantic models.

These models are the single source of truth: the CRD in ``crds/`` is generated from them by
:mod:`kubesandbox_api.crdgen`, and every component parses raw bodies into them. Nothing here
does I/O. Modules: :mod:`.spec` (what the user asks for), :mod:`.status` (what the system
observed), :mod:`.conditions` (condition types and reasons), :mod:`.quantity` (memory sizes),
:mod:`.resource` (the whole object).
"""

from kubesandbox_api.resource import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAME, VERSION, Sandbox
from kubesandbox_api.spec import SandboxSpec
from kubesandbox_api.status import SandboxStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "Sandbox",
    "SandboxSpec",
    "SandboxStatus",
]

"""The per-sandbox runtime: desired state in, QEMU processes, phases and conditions out.

``model`` (what the operator asks for and what we report), ``cgroups`` (per-VM jails),
``relay`` (the relay with drain and re-adoption), ``vmm`` (starting, adopting and steering
QEMU), ``crash`` (why a VM ended), ``records`` (the JSON record per sandbox that survives us),
``supervisor`` (one state machine per sandbox) and ``manager`` (all of them, re-adoption).
"""

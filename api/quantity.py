"""Memory sizes: an integer number of MiB (microsandbox's unit) or a Kubernetes quantity string.

``memory: 512`` and ``memory: "512Mi"`` mean the same; ``"1Gi"`` is 1024 MiB. A quantity that is
not a whole number of MiB is rounded *up* (a guest never gets less than it asked for). The CRD
checks the same rules with CEL's ``quantity()`` library so that bad values are refused by the
apiserver; :func:`to_mib` is what the node agent uses to size the VM.
"""

import re
from decimal import ROUND_CEILING, Decimal

MIB = 1024 * 1024
MIN_MEMORY_MIB = 96
"""The smallest guest that boots with margin: the pinned kernel and boot image need 80 MiB (72
and 64 panic while booting, "System is deadlocked on memory"; docs/operator.md)."""
MAX_MEMORY_MIB = 1024 * 1024  # 1 TiB

_SUFFIXES = {
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}
QUANTITY_PATTERN = r"^[0-9]+([.][0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)


def to_mib(value: int | str) -> int:
    """Returns the size in whole MiB (rounded up); raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("memory must be an integer number of MiB or a quantity such as '1Gi'")
    if isinstance(value, int):
        mib = value
    else:
        match = _QUANTITY.match(value)
        if match is None:
            raise ValueError(
                f"memory {value!r} is not a quantity: use an integer number of MiB "
                "or a quantity such as '512Mi' or '2Gi'"
            )
        number = value[: match.start(2)] if match.group(2) else value
        in_bytes = Decimal(number) * _SUFFIXES[match.group(2) or ""]
        mib = int((in_bytes / MIB).to_integral_value(rounding=ROUND_CEILING))
    if not MIN_MEMORY_MIB <= mib <= MAX_MEMORY_MIB:
        raise ValueError(
            f"memory {value!r} is {mib} MiB; it must be between {MIN_MEMORY_MIB} MiB "
            f"and {MAX_MEMORY_MIB} MiB"
        )
    return mib

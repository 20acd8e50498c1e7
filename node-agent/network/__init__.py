"""Per-sandbox networking: a network namespace per sandbox with QEMU's tap inside, policy
enforced with iptables in that namespace (``netns``; the choice is argued in
docs/networking.md), and the address ranges a ``PublicOnly`` sandbox may not reach
(``ranges``)."""

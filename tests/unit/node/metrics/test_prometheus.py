from __future__ import annotations

from kubesandbox_api.status import SandboxMetrics
from kubesandbox_node.metrics.prometheus import Labelled, render


def test_prometheus_text_escapes_labels_and_skips_missing_values() -> None:
    sample = SandboxMetrics(cpu_percent=12.5, memory_bytes=None)
    text = render([Labelled('we"ird', "n\\1", "u", sample)], {"Running": 1})
    assert (
        'kubesandbox_sandbox_cpu_percent{namespace="we\\"ird",name="n\\\\1",uid="u"} 12.5' in text
    )
    assert "kubesandbox_sandbox_memory_bytes{" not in text
    assert "# TYPE kubesandbox_sandbox_disk_read_bytes_total counter" in text

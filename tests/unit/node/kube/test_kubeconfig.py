import tempfile
from pathlib import Path

import pytest

from kubesandbox_devenv.certs import ClusterPKI
from kubesandbox_devenv.kubeconfig import write_kubeconfig
from kubesandbox_node.kube.client import load_kubeconfig


def test_embedded_client_keys_leave_no_copy_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = ClusterPKI(tmp_path / "pki").create()
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig",
        server="https://127.0.0.1:6443",
        ca=pki.ca.cert,
        user="admin",
        client=pki.admin,
        embed=True,
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    credentials = load_kubeconfig(kubeconfig)

    assert credentials.server == "https://127.0.0.1:6443"
    assert list(scratch.iterdir()) == []  # the key was loaded, then its file removed

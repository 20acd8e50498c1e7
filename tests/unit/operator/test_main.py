"""The operator's command line: the sandbox Pod settings and their bounds."""

from pathlib import Path

import pytest

from kubesandbox_operator.main import in_cluster_connection, parse, pod_settings
from kubesandbox_operator.reconcile.pod import PodSettings


def test_defaults_are_the_pod_settings_defaults() -> None:
    assert pod_settings(parse([])) == PodSettings()


def test_flags_reach_the_pod_settings() -> None:
    args = parse(
        [
            "--pause-image=mirror.example/pause:3.10",
            "--cpu-allocation-ratio=20",
            "--cpu-overhead-millicores=25",
            "--memory-overhead-mib=128",
        ]
    )
    assert pod_settings(args) == PodSettings("mirror.example/pause:3.10", 20.0, 25, 128)


@pytest.mark.parametrize(
    "flag", ["--cpu-allocation-ratio=0.5", "--cpu-allocation-ratio=nan", "--memory-overhead-mib=-1"]
)
def test_bad_values_are_refused_naming_the_flag(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse([flag])
    assert flag.split("=")[0] in capsys.readouterr().err


def test_in_cluster_login_uses_the_service_ip_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("kubesandbox-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = in_cluster_connection(tmp_path)
    assert info.server == "https://10.96.0.1:443"  # not kubernetes.default.svc: no DNS needed
    assert info.token == "t0ken"
    assert info.ca_path == str(tmp_path / "ca.crt")
    assert info.default_namespace == "kubesandbox-system"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert in_cluster_connection(tmp_path).server == "https://[fd00::1]:443"

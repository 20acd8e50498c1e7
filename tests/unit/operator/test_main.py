"""The operator's command line: the sandbox Pod settings and their bounds."""

import pytest

from kubesandbox_operator.main import parse, pod_settings
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

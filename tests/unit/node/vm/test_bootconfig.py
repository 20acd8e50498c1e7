import json

import pytest
from pydantic import ValidationError

from kubesandbox_node.vm.bootconfig import BootConfig, OverlayRoot, TmpfsVolume

DOC_EXAMPLE = {
    "version": 1,
    "hostname": "worker",
    "root": {"kind": "overlay", "layers": ["layer0", "layer1"], "upper": "upper"},
    "volumes": [
        {"mountPath": "/data", "kind": "tmpfs", "sizeMiB": 100},
        {"mountPath": "/src", "kind": "virtiofs", "tag": "vol1", "readOnly": True},
    ],
    "env": ["PATH=/usr/bin:/bin", "DEBUG=true"],
    "workdir": "/app",
    "user": "1000:1000",
    "shell": "/bin/sh",
    "init": None,
    "network": None,
    "logLevel": "info",
    "somethingNewer": {"ignored": True},
}


def test_the_documented_example_round_trips_in_camel_case() -> None:
    config = BootConfig.model_validate(DOC_EXAMPLE)
    assert isinstance(config.volumes[0], TmpfsVolume)
    assert config.volumes[0].size_mib == 100
    out = json.loads(config.to_json())
    expected = {k: v for k, v in DOC_EXAMPLE.items() if k != "somethingNewer"}
    assert {k: out[k] for k in expected} == expected


def test_bad_root_kind_names_the_field() -> None:
    with pytest.raises(ValidationError, match="root"):
        BootConfig.model_validate({"root": {"kind": "floppy"}})


def test_python_construction() -> None:
    config = BootConfig(root=OverlayRoot(layers=["l0"], upper="up"), log_level="debug")
    assert json.loads(config.to_json())["logLevel"] == "debug"

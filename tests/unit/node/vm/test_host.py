from pathlib import Path

from kubesandbox_node.vm.host import tsc_khz

DMESG = """[    0.000058] tsc: Detected 2596.122 MHz processor
[    1.2] tsc: Refined TSC clocksource calibration: 2596.001 MHz
"""


def test_sysfs_value_wins(tmp_path: Path) -> None:
    (tmp_path / "khz").write_text("2400000\n")
    assert tsc_khz(tmp_path / "khz", tmp_path / "none", kernel_log=DMESG) == 2400000


def test_refined_calibration_from_kernel_log(tmp_path: Path) -> None:
    assert tsc_khz(tmp_path / "none", tmp_path / "none", kernel_log=DMESG) == 2596001


def test_cpuinfo_only_with_constant_tsc(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("cpu MHz\t\t: 2596.122\nflags\t\t: fpu tsc constant_tsc\n")
    assert tsc_khz(tmp_path / "none", info, kernel_log="") == 2596122
    info.write_text("cpu MHz\t\t: 2596.122\nflags\t\t: fpu tsc\n")
    assert tsc_khz(tmp_path / "none", info, kernel_log="") is None

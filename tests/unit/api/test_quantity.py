import pytest

from kubesandbox_api.quantity import to_mib


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        (512, 512),
        ("512Mi", 512),
        ("1Gi", 1024),
        ("1.5Gi", 1536),
        ("1G", 954),  # 10^9 bytes is 953.67 MiB: rounded up, never down
        ("131072Ki", 128),
        ("1Ti", 1024 * 1024),
    ],
)
def test_sizes_in_mib(value: int | str, mib: int) -> None:
    assert to_mib(value) == mib


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (32, "between 96 MiB"),
        (64, "between 96 MiB"),
        ("10Mi", "between 96 MiB"),
        ("2Ti", "between 96 MiB"),
        ("lots", "is not a quantity"),
        ("1 Gi", "is not a quantity"),
        ("-1Gi", "is not a quantity"),
        (True, "integer number of MiB"),
    ],
)
def test_bad_sizes_say_why(value: int | str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_mib(value)

"""The channel rule (docs/method.md §2.1) pinned against the method's table, and width parsing."""

import math

import pytest

from us3l.core.errors import WidthError
from us3l.core.width import channels_at, format_width, make_divisible, parse_widths, validate_width

# docs/method.md §2.3 table: width -> channels for 64/128/256/512/2048.
TABLE = {
    0.25: (16, 32, 64, 128, 512),
    0.30: (24, 40, 80, 152, 616),
    0.50: (32, 64, 128, 256, 1024),
    0.75: (48, 96, 192, 384, 1536),
    1.00: (64, 128, 256, 512, 2048),
}
MBV2_STEM = {0.25: 8, 0.30: 16, 0.50: 16, 0.75: 24, 1.00: 32}
MBV2_BLOCKS = {
    0.25: (8, 8, 8, 16, 24, 40, 80),
    0.30: (8, 8, 16, 24, 32, 48, 96),
    0.50: (8, 16, 16, 32, 48, 80, 160),
    0.75: (16, 24, 24, 48, 72, 120, 240),
    1.00: (16, 24, 32, 64, 96, 160, 320),
}


@pytest.mark.parametrize("width", sorted(TABLE))
def test_resnet_channels_match_method_table(width):
    assert tuple(channels_at(c, width) for c in (64, 128, 256, 512, 2048)) == TABLE[width]


@pytest.mark.parametrize("width", sorted(MBV2_BLOCKS))
def test_mobilenet_channels_match_method_table(width):
    assert channels_at(32, width) == MBV2_STEM[width]
    assert tuple(channels_at(c, width) for c in (16, 24, 32, 64, 96, 160, 320)) == MBV2_BLOCKS[width]


def test_issue_examples():
    assert [channels_at(c, 0.35) for c in (64, 128, 256, 512)] == [24, 48, 88, 176]
    assert [channels_at(c, 0.30) for c in (64, 128, 256, 512)] == [24, 40, 80, 152]


def test_ten_percent_correction_fires_exactly_in_its_intervals():
    # Step 3 turns a round-down into a round-up only for v in (8.89,12), (17.78,20), (26.67,28), (35.56,36).
    assert make_divisible(9.6) == 16 and make_divisible(19.2) == 24
    assert make_divisible(8.8) == 8 and make_divisible(12.0) == 16 and make_divisible(11.99) == 16
    assert make_divisible(17.7) == 16 and make_divisible(17.9) == 24
    assert make_divisible(26.6) == 24 and make_divisible(26.7) == 32
    assert make_divisible(35.5) == 32 and make_divisible(35.6) == 40
    for v in [x / 10 for x in range(40, 5000)]:
        m = make_divisible(v)
        assert m % 8 == 0 and m >= 8 and m >= 0.9 * v and m < v + 8


def test_small_values_lower_bound_one_not_eight():
    assert make_divisible(1.0) == 1
    assert make_divisible(1.2) == 9  # 0 -> 1 -> +8 because 1 < 0.9*1.2
    assert make_divisible(3.9) == 9


def test_ratio_form_is_t_times_rounded_input():
    # MobileNetV2 hidden = t * make_divisible(inp * w)
    for inp, w in [(16, 0.3), (24, 0.35), (32, 0.73), (96, 0.25)]:
        assert channels_at(inp * 6, w, ratio=6) == 6 * make_divisible(inp * w)


def test_channels_never_exceed_the_layer_and_snap_divisor():
    assert channels_at(16, 1.0) == 16
    assert channels_at(64, 0.35, divisor=16) == 32
    assert channels_at(512, 0.35, divisor=32) % 32 == 0


def test_parse_widths_lists_and_ranges():
    assert parse_widths("0.25,0.5,1.0") == [0.25, 0.5, 1.0]
    assert parse_widths("0.25:1.0:0.25") == [0.25, 0.5, 0.75, 1.0]
    ladder = parse_widths("0.25:1.0:0.05")
    assert len(ladder) == 16 and ladder[0] == 0.25 and ladder[-1] == 1.0
    assert parse_widths("0.5, 0.5,0.25") == [0.5, 0.25]
    assert parse_widths(0.35) == [0.35]


@pytest.mark.parametrize("bad", ["", "abc", "0", "1.5", "nan", "0.5:0.25:0.1", "0.25:1.0:0", "0.25:1.0:-1", "0.2:0.3", "inf"])
def test_parse_widths_rejects_bad_input(bad):
    with pytest.raises(WidthError) as info:
        parse_widths(bad)
    assert "valid" in str(info.value)


def test_validate_width_custom_range_and_format():
    assert validate_width("0.7", 0.5, 1.0) == 0.7
    with pytest.raises(WidthError):
        validate_width(0.3, 0.5, 1.0)
    with pytest.raises(WidthError):
        validate_width(math.nan)
    assert format_width(1.0) == "1.0" and format_width(0.35) == "0.35" and format_width(0.1 + 0.2) == "0.3"

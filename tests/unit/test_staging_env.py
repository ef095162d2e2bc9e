"""The admin's staging env file: what builds get besides the fixed base."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.staging import StagingEnvError, load_staging_env, parse_env_file


def test_lines_comments_and_literal_values() -> None:
    text = (
        "# proxies for builds\n\nhttp_proxy=http://proxy.internal:3128\n"
        'PIP_INDEX_URL=https://pypi.internal/simple\nQUOTED="kept as written"\n'
        "EMPTY=\n  INDENTED=x=y\n"
    )
    assert parse_env_file(text) == {
        "http_proxy": "http://proxy.internal:3128",
        "PIP_INDEX_URL": "https://pypi.internal/simple",
        "QUOTED": '"kept as written"',
        "EMPTY": "",
        "INDENTED": "x=y",
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("OK=1\nno equals sign\n", "line 2 is not NAME=VALUE"),
        ("1BAD=x\n", "line 1 is not NAME=VALUE"),
        ("A B=x\n", "line 1 is not NAME=VALUE"),
        ("HOME=/root\n", "HOME is set by the node"),
        ("FOUNDRY_UV=/tmp/evil\n", "FOUNDRY_UV is set by the node"),
    ],
)
def test_bad_lines_are_named(text: str, why: str) -> None:
    with pytest.raises(StagingEnvError, match=why):
        parse_env_file(text)


def test_a_missing_or_huge_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StagingEnvError, match="cannot read the staging env file"):
        load_staging_env(tmp_path / "nope.env")
    big = tmp_path / "big.env"
    big.write_text("A=" + "x" * (70 << 10))
    with pytest.raises(StagingEnvError, match="larger than"):
        load_staging_env(big)

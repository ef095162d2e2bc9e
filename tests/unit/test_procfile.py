"""Procfile and bin/release parsing."""

from __future__ import annotations

import pytest

from node.procfile import ProcfileError, parse_procfile, parse_release, process_types


def test_procfile_types_comments_and_blank_lines() -> None:
    text = "# processes\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n\nworker:python w.py\n"
    assert parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "python w.py",
    }


def test_procfile_later_line_wins_and_colons_in_commands_survive() -> None:
    assert parse_procfile("web: a\nweb: echo a:b") == {"web": "echo a:b"}


def test_bad_procfile_line_is_named() -> None:
    with pytest.raises(ProcfileError, match="line 2"):
        parse_procfile("web: ok\nthis is not a process\n")


def test_errors_never_quote_what_the_build_wrote() -> None:
    # A build can point these at any file: the error says where, never what.
    with pytest.raises(ProcfileError) as bad_line:
        parse_procfile("root:$6$hash-of-a-password:19000:0:99999:7:::\nsecret-line\n")
    assert "line 2" in str(bad_line.value)
    assert "secret" not in str(bad_line.value)
    with pytest.raises(ProcfileError) as bad_yaml:
        parse_release("token: [secret-value\n")
    assert "line 2" in str(bad_yaml.value) or "line 1" in str(bad_yaml.value)
    assert "secret" not in str(bad_yaml.value)


def test_release_yaml_defaults() -> None:
    text = "---\ndefault_process_types:\n  web: python3 server.py\n"
    assert parse_release(text) == {"web": "python3 server.py"}
    assert parse_release("--- {}") == {}
    assert parse_release("") == {}


@pytest.mark.parametrize("text", ["- a list", "default_process_types: [1]", "{unclosed"])
def test_bad_release_yaml(text: str) -> None:
    with pytest.raises(ProcfileError):
        parse_release(text)


def test_procfile_overrides_release_defaults() -> None:
    release = "default_process_types:\n  web: default\n  clock: tick\n"
    assert process_types("web: mine", release) == {"web": "mine", "clock": "tick"}
    assert process_types(None, release) == {"web": "default", "clock": "tick"}

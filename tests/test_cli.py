"""The CLI is built from the same options dataclasses as the API."""

import dataclasses

import pytest

from hf_klas.cli import COMMANDS, _load, build_parser


def test_every_command_is_available_and_mirrors_its_dataclass():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        opts_cls, run = _load(name)
        assert callable(run)
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        for f in dataclasses.fields(opts_cls):
            assert f"--{f.name}" in flags, (name, f.name)
            assert f.metadata.get("help"), (name, f.name)


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["demo", "--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out

"""The CLI is built from the same options dataclasses as the API."""

import dataclasses

import pytest

from hf_klas.cli import COMMANDS, _load, build_parser


def test_every_command_is_available_and_mirrors_its_dataclass():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        classes, run = _load(name)
        assert callable(run)
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        for opts_cls in classes:
            for f in dataclasses.fields(opts_cls):
                if not f.init:
                    continue
                assert f"--{f.name}" in flags, (name, f.name)
                if opts_cls.__module__.startswith("hf_klas"):
                    assert f.metadata.get("help"), (name, f.name)


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["demo", "--help"])
    assert e.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_a_plan_alone_names_the_anchors_for_finetune_and_pareto(tmp_path, capsys):
    """plan.json records its anchors: `finetune --plan` and `pareto --plan` need no --front/--back."""
    import json

    import datasets
    import torch
    from tiny import vision_pair

    from hf_klas.cli import main

    small, big = vision_pair()
    small.save_pretrained(tmp_path / "small")
    big.save_pretrained(tmp_path / "big")
    g = torch.Generator().manual_seed(0)
    datasets.Dataset.from_dict({"pixel_values": torch.randn(16, 1, 8, 8, generator=g).numpy(),
                                "label": (torch.arange(16) % 5).tolist()}).save_to_disk(str(tmp_path / "data"))
    assert main(["select", "--front", str(tmp_path / "small"), "--back", str(tmp_path / "big"), "--method", "snnet",
                 "--num_buckets", "2", "--out_dir", str(tmp_path / "plan"), "--progress", "false"]) == 0
    assert main(["finetune", "--plan", str(tmp_path / "plan"), "--mode", "stitch", "--stitch_init", "identity",
                 "--dataset", str(tmp_path / "data"), "--max_steps", "1", "--per_device_train_batch_size", "4",
                 "--save_strategy", "no", "--output_dir", str(tmp_path / "ft"), "--use_cpu", "--report_to", "none",
                 "--progress", "false", "--disable_tqdm", "true"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["models"] and summary["global_step"] == 1
    assert main(["pareto", "--plan", str(tmp_path / "plan"), "--stitch_init", "identity", "--dataset",
                 str(tmp_path / "data"), "--split", "train", "--max_samples", "8", "--out_dir", str(tmp_path / "p"),
                 "--progress", "false"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len([p for p in out["points"] if p["kind"] == "anchor"]) == 2


def test_select_parses_the_chosen_methods_own_options(capsys):
    with pytest.raises(SystemExit):
        build_parser(["select", "--method", "cka"]).parse_args(["select", "--method", "cka", "--help"])
    text = capsys.readouterr().out
    assert "--max_tokens" in text and "--probe " not in text
    with pytest.raises(SystemExit):
        build_parser(["select"]).parse_args(["select", "--help"])
    assert "--probe" in capsys.readouterr().out  # KLAS, the default method


def test_every_help_text_renders():
    from hf_klas.selection.selectors import SELECTORS

    for name in COMMANDS:
        sub = next(a for a in build_parser([name])._actions if a.dest == "command")
        assert sub.choices[name].format_help()
    for method in SELECTORS:  # each method's own options are select's flags when chosen
        sub = next(a for a in build_parser(["select", "--method", method])._actions if a.dest == "command")
        assert sub.choices["select"].format_help()

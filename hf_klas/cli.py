"""``hf-klas`` command line: one subcommand per options dataclass (the same dataclass the API takes).

Flags, defaults and help text come from each dataclass's fields via ``HfArgumentParser``, so the CLI and the
Python API cannot drift apart. Every command prints a JSON summary on its last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys

from .errors import HfKlasError

# command -> (module, options class, runner, one-line help)
COMMANDS = {
    "select": ("hf_klas.selection.api", "SelectOptions", "run_select",
               "score every stitch configuration of two anchors (KLAS or a baseline) and write a plan"),
    "finetune": ("hf_klas.training.api", "FinetuneOptions", "run_finetune",
                 "finetune a stitched model (stitch only, LoRA, or full) with the Trainer"),
    "evaluate": ("hf_klas.evaluation.api", "EvaluateOptions", "run_evaluate",
                 "perplexity / ROUGE / top-1 accuracy of a model"),
    "pareto": ("hf_klas.evaluation.api", "ParetoOptions", "run_pareto",
               "evaluate every configuration of a plan and draw the accuracy/FLOPs front"),
    "demo": ("hf_klas.demo", "DemoOptions", "run_demo",
             "the whole job offline on packaged real weights (ViT zoo + SmolLM2) with a report"),
    "quality": ("hf_klas.quality", "QualityOptions", "run_quality",
                "selection-quality study: every selector against finetuned ground truth"),
}


def _load(command: str):
    module, opts_name, run_name, _ = COMMANDS[command]
    mod = importlib.import_module(module)
    return getattr(mod, opts_name), getattr(mod, run_name)


def build_parser() -> argparse.ArgumentParser:
    from transformers import HfArgumentParser

    parser = argparse.ArgumentParser(prog="hf-klas", description=__doc__.splitlines()[0])
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"hf_klas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=HfArgumentParser)
    for name, (_, _, _, help_text) in COMMANDS.items():
        try:
            opts_cls, _ = _load(name)
        except (ImportError, AttributeError) as err:  # an optional area that failed to import
            p = sub.add_parser(name, dataclass_types=[], help=f"{help_text} (unavailable: {err})")
            continue
        sub.add_parser(name, dataclass_types=[opts_cls], help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    opts_cls, run = _load(args.command)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(opts_cls) if hasattr(args, f.name)}
    try:
        summary = run(opts_cls(**values))
    except HfKlasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary is not None:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

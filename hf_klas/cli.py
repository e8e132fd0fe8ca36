"""``hf-klas`` command line: one subcommand per runner, its flags parsed from the same dataclasses the API takes.

Each command names its options dataclasses; ``HfArgumentParser`` turns their fields into flags (defaults and help
text included), so the CLI and the Python API cannot drift apart. ``finetune`` parses hf_klas's
``FinetuneOptions`` next to transformers' own ``TrainingArguments``; ``select`` parses ``SelectOptions`` next
to the chosen method's own config (``hf-klas select --method cka --help`` lists CKA's options). Every command
prints a JSON summary on its last line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from transformers import HfArgumentParser

from .errors import HfKlasError
from .version import __version__

# command -> (module, runner, one-line help). The module's ``<runner>_options(argv)`` lists the dataclasses whose
# fields are the command's flags (in the runner's positional order); without it, ``Options`` of the command.
COMMANDS = {
    "select": ("hf_klas.selection.api", "run_select",
               "score every stitch configuration of two anchors (KLAS or a baseline) and write a plan"),
    "finetune": ("hf_klas.training.api", "run_finetune",
                 "finetune a stitched model (stitch only, LoRA, or full) with the Trainer"),
    "evaluate": ("hf_klas.evaluation.api", "run_evaluate",
                 "perplexity / ROUGE / top-1 accuracy of a model"),
    "pareto": ("hf_klas.evaluation.api", "run_pareto",
               "evaluate every configuration of a plan and draw the accuracy/FLOPs front"),
    "demo": ("hf_klas.demo", "run_demo",
             "the whole job offline on packaged real weights (ViT zoo + SmolLM2) with a report"),
    "quality": ("hf_klas.study.runner", "run_quality",
                "selection-quality study: every selector against finetuned ground truth"),
}


def _load(command: str, argv: list[str] | None = None):
    """``(dataclasses, runner)`` of ``command``; ``argv`` lets a command choose dataclasses from its flags."""
    module, run_name, _ = COMMANDS[command]
    mod = importlib.import_module(module)
    return list(getattr(mod, "cli_options")(run_name, argv or [])), getattr(mod, run_name)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` only the command it names gets its flags (its module is imported), the others
    just their names and help, so ``hf-klas --help`` loads no runner. ``argv=None``: every command's flags."""
    parser = argparse.ArgumentParser(prog="hf-klas", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hf_klas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=HfArgumentParser)
    chosen = argv[0] if argv else None
    for name, (_, _, help_text) in COMMANDS.items():
        if argv is None or name == chosen:
            classes, _ = _load(name, argv if name == chosen else None)
        else:
            classes = []
        sub.add_parser(name, dataclass_types=classes, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    classes, run = _load(args.command, argv)
    try:
        values = [cls(**{k: getattr(args, k) for k in _init_fields(cls) if hasattr(args, k)}) for cls in classes]
        summary = run(*values)
    except HfKlasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary is not None:
        print(json.dumps(summary, default=str))
    return 0


def _init_fields(cls) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls) if f.init]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

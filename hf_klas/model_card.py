"""Model card (README.md) for a saved stitched model: where it came from and how it was made.

Written by ``save_pretrained`` (so ``push_to_hub`` carries it). A README the user wrote is never
overwritten: only a card carrying :data:`CARD_MARKER` (one hf_klas wrote) is replaced.

This module ships inside stitched checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .flops import format_flops

CARD_MARKER = "<!-- hf_klas:model-card -->"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(provenance: dict) -> str | None:
    """The Hub id an anchor stands for: the one recorded (an offline alias of a Hub model), or its name when
    that is a Hub id and not a local path. A local path never goes into Hub metadata."""
    if provenance.get("hub_id"):
        return provenance["hub_id"]
    name = str(provenance.get("name_or_path") or "")
    return name if _HUB_ID.match(name) and not Path(name).exists() else None


def _front_matter(config, tags: list[str]) -> tuple[list[str], list[str]]:
    """YAML front matter (``base_model``: the anchors' Hub ids, never local paths) and the anchors' display names."""
    anchors = getattr(config, "anchors", {}) or {}
    provenance = [anchors.get(k) or {} for k in ("front", "back")]
    bases = [b for b in dict.fromkeys(hub_id(p) for p in provenance) if b]
    names = [hub_id(p) or p.get("name_or_path") or role for p, role in zip(provenance, ("front anchor", "back anchor"))]
    pipeline = "text-generation" if getattr(config, "task", None) == "causal-lm" else "image-classification"
    lines = ["---", "library_name: transformers", f"pipeline_tag: {pipeline}", "tags:"] + [f"- {t}" for t in tags]
    if bases:
        lines.append("base_model:")
        lines += [f"- {b_}" for b_ in bases]
        lines.append("base_model_relation: merge")
    return lines + ["---", CARD_MARKER, ""], names


def _auto_class(config) -> str:
    return "AutoModelFor" + ("CausalLM" if getattr(config, "task", None) == "causal-lm" else "ImageClassification")


def _provenance(config, recipe_title: str = "## Recipe") -> list[str]:
    """The embedded recipe and the anchors (name or path, revision), as JSON blocks."""
    return [recipe_title, "", "```json", json.dumps(getattr(config, "recipe", {}) or {}, indent=2, sort_keys=True,
                                                     default=str), "```", "",
            "Anchors (name or path, revision):", "", "```json",
            json.dumps(getattr(config, "anchors", {}) or {}, indent=2, default=str), "```", ""]


def render_model_card(config) -> str:
    """Markdown with YAML front matter (``base_model``: the anchors' Hub ids) and the embedded recipe."""
    if getattr(config, "stitch_configs", None):
        return render_stitchable_card(config)
    lines, names = _front_matter(config, ["hf_klas", "model-stitching"])
    info = getattr(config, "stitch_info", {}) or {}
    f, b = config.front_config, config.back_config
    i, j = config.front_blocks, config.back_start
    auto = _auto_class(config)
    flops_text = format_flops(info["flops"]) if isinstance(info.get("flops"), (int, float)) else "n/a"
    lines += ["# Stitched model", "",
              f"Blocks 1–{i} of **{names[0]}** ({f.model_type}, hidden {f.hidden_size}), "
              f"a learned linear stitch ({f.hidden_size} → {b.hidden_size}), "
              f"then blocks {j + 1}–{b.num_hidden_layers} of "
              f"**{names[1]}** ({b.model_type}, hidden {b.hidden_size}) with its final norm and head.",
              "", "| | value |", "|---|---|",
              f"| stitch point (front_blocks, back_start) | ({i}, {j}) |",
              f"| blocks run | {i} front + {b.num_hidden_layers - j} back = {config.num_hidden_layers} |",
              f"| forward FLOPs | {flops_text} ({info.get('flops_unit', 'per sequence')}) |",
              f"| parameters | {info.get('params', 'n/a')} |",
              f"| hf_klas version | {getattr(config, 'hf_klas_version', 'n/a')} |", "",
              "## Use", "", "```python",
              f"from transformers import {auto}",
              f"model = {auto}.from_pretrained(\"<this repo>\", trust_remote_code=True)  # or `import hf_klas` first",
              "```", ""]
    return "\n".join(lines + _provenance(config))


def _steps_per_config(config) -> list[int] | None:
    """How many supernet training forwards drew each configuration (recomputed from the sampler's seed)."""
    steps = int((getattr(config, "recipe", {}) or {}).get("sample_steps") or 0)
    if not steps or getattr(config, "sampling", None) is None or not hasattr(config, "sample_index"):
        return None
    counts = [0] * len(config.stitch_configs)
    for k in range(steps):
        counts[config.sample_index(k)] += 1
    return counts


def render_stitchable_card(config) -> str:
    """The card of a stitchable model: every configuration (FLOPs, params, measured metrics, selector score, how
    often supernet training ran it), how to switch, and the recipe."""
    lines, names = _front_matter(config, ["hf_klas", "model-stitching", "stitchable", "sn-net"])
    f, b = config.front_config, config.back_config
    table = sorted(enumerate(config.stitch_configs), key=lambda kv: kv[1]["flops"])
    metrics = sorted({k for e in config.stitch_configs for k in e.get("metrics") or {}})
    steps = _steps_per_config(config)
    recipe = getattr(config, "recipe", {}) or {}
    unit = (config.stitch_info or {}).get("flops_unit", "")
    anchors = f"**{names[0]}**" if config.self_stitch else f"**{names[0]}** → **{names[1]}**"
    head = ["configuration (front_blocks, back_start)", "blocks run", f"forward FLOPs ({unit})", "parameters",
            *metrics, "selector score", "training steps", "active"]
    lines += ["# Stitchable model", "",
              f"One network, {len(table)} stitch configurations of {anchors} ({f.model_type}, hidden {f.hidden_size}"
              + ("" if config.self_stitch else f" → {b.model_type}, hidden {b.hidden_size}")
              + "): the anchors' blocks "
              "are held once, with one learned linear stitch per configuration, and the configuration is switched at "
              "run time (no reload, no weight copy). Configuration (i, j) runs front blocks 1–i, its stitch, then "
              f"back blocks j+1–{b.num_hidden_layers} with the back's final norm and head.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, e in table:
        i, j = e["front_blocks"], e["back_start"]
        row = [f"({i}, {j})", f"{i} + {b.num_hidden_layers - j}", format_flops(e["flops"]), f"{e['params']:,}"]
        row += [f"{e['metrics'][m]:.4g}" if m in (e.get("metrics") or {}) else "" for m in metrics]
        row += [f"{e['score']:.4g}" if e.get("score") is not None else "", str(steps[k]) if steps else "",
                "yes" if (i, j) == (config.front_blocks, config.back_start) else ""]
        lines.append("| " + " | ".join(row) + " |")
    trained = (f"as an SN-Net supernet ({recipe.get('sample_steps', 0)} training forwards, each one configuration "
               f"drawn by `{config.sampling}` sampling, seed {config.sampling_seed})"
               if recipe.get("training") == "supernet" or recipe.get("sample_steps") else "not trained after the "
               "stitch initialisation")
    auto = _auto_class(config)
    lines += ["", f"Stitches initialised by `{recipe.get('stitch_init', 'n/a')}`"
              + (f" from the `{recipe['selection_method']}` plan's candidates" if recipe.get("selection_method")
                 else "")
              + f", then trained {trained}. hf_klas {getattr(config, 'hf_klas_version', 'n/a')}.", "",
              "## Use", "", "```python", f"from transformers import {auto}",
              f"model = {auto}.from_pretrained(\"<this repo>\", trust_remote_code=True, budget_flops=0.5)",
              "model.set_budget(0.8)  # the best configuration within 80% of the back anchor's FLOPs",
              f"model.set_stitch{table[0][1]['front_blocks'], table[0][1]['back_start']}  # or one by name",
              "small = model.extract(*model.active_stitch)  # a plain stitched model of one configuration",
              "```", ""]
    return "\n".join(lines + _provenance(config, "## Recipe (every configuration)"))


def write_model_card(save_directory, config) -> bool:
    """Write README.md unless a user-written one is there. Returns whether it was written."""
    path = Path(save_directory) / "README.md"
    if path.exists() and CARD_MARKER not in path.read_text(errors="ignore"):
        return False
    path.write_text(render_model_card(config))
    return True

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


def render_model_card(config) -> str:
    """Markdown with YAML front matter (``base_model``: the anchors' Hub ids) and the embedded recipe."""
    anchors = getattr(config, "anchors", {}) or {}
    provenance = [anchors.get(k) or {} for k in ("front", "back")]
    bases = [b for b in dict.fromkeys(hub_id(p) for p in provenance) if b]
    names = [hub_id(p) or p.get("name_or_path") or role for p, role in zip(provenance, ("front anchor", "back anchor"))]
    task = getattr(config, "task", None)
    pipeline = "text-generation" if task == "causal-lm" else "image-classification"
    info = getattr(config, "stitch_info", {}) or {}
    recipe = getattr(config, "recipe", {}) or {}
    f, b = config.front_config, config.back_config
    i, j = config.front_blocks, config.back_start
    lines = ["---", "library_name: transformers", f"pipeline_tag: {pipeline}", "tags:", "- hf_klas", "- model-stitching"]
    if bases:
        lines.append("base_model:")
        lines += [f"- {b_}" for b_ in bases]
        lines.append("base_model_relation: merge")
    lines += ["---", CARD_MARKER, "", "# Stitched model", "",
              f"Blocks 1–{i} of **{names[0]}** ({f.model_type}, hidden {f.hidden_size}), "
              f"a learned linear stitch ({f.hidden_size} → {b.hidden_size}), then blocks {j + 1}–{b.num_hidden_layers} of "
              f"**{names[1]}** ({b.model_type}, hidden {b.hidden_size}) with its final norm and head.",
              "", "| | value |", "|---|---|",
              f"| stitch point (front_blocks, back_start) | ({i}, {j}) |",
              f"| blocks run | {i} front + {b.num_hidden_layers - j} back = {config.num_hidden_layers} |",
              f"| forward FLOPs | {format_flops(info['flops']) if isinstance(info.get('flops'), (int, float)) else 'n/a'} ({info.get('flops_unit', 'per sequence')}) |",
              f"| parameters | {info.get('params', 'n/a')} |",
              f"| hf_klas version | {getattr(config, 'hf_klas_version', 'n/a')} |", "",
              "## Use", "", "```python",
              "from transformers import AutoModelFor" + ("CausalLM" if task == "causal-lm" else "ImageClassification"),
              "model = AutoModelFor" + ("CausalLM" if task == "causal-lm" else "ImageClassification")
              + ".from_pretrained(\"<this repo>\", trust_remote_code=True)  # or `import hf_klas` first",
              "```", "", "## Recipe", "", "```json", json.dumps(recipe, indent=2, sort_keys=True, default=str), "```", "",
              "Anchors (name or path, revision):", "", "```json", json.dumps(anchors, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def write_model_card(save_directory, config) -> bool:
    """Write README.md unless a user-written one is there. Returns whether it was written."""
    path = Path(save_directory) / "README.md"
    if path.exists() and CARD_MARKER not in path.read_text(errors="ignore"):
        return False
    path.write_text(render_model_card(config))
    return True

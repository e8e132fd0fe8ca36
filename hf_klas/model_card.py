"""Model card (README.md) for a saved stitched model: where it came from and how it was made.

Written by ``save_pretrained`` (so ``push_to_hub`` carries it). A README the user wrote is never
overwritten: only a card carrying :data:`CARD_MARKER` (one hf_klas wrote) is replaced.

This module ships inside stitched checkpoints (``trust_remote_code``): relative imports only.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD_MARKER = "<!-- hf_klas:model-card -->"


def _fmt_flops(x) -> str:
    if not isinstance(x, (int, float)):
        return "n/a"
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("KFLOPs", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} FLOPs"


def render_model_card(config) -> str:
    """Markdown with YAML front matter (``base_model`` lists both anchors) and the embedded recipe."""
    anchors = getattr(config, "anchors", {}) or {}
    bases = [anchors.get(k, {}).get("name_or_path") for k in ("front", "back")]
    bases = [b for b in dict.fromkeys(bases) if b]
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
              f"Blocks 1–{i} of **{bases[0] if bases else 'front anchor'}** ({f.model_type}, hidden {f.hidden_size}), "
              f"a learned linear stitch ({f.hidden_size} → {b.hidden_size}), then blocks {j + 1}–{b.num_hidden_layers} of "
              f"**{bases[-1] if bases else 'back anchor'}** ({b.model_type}, hidden {b.hidden_size}) with its final norm and head.",
              "", "| | value |", "|---|---|",
              f"| stitch point (front_blocks, back_start) | ({i}, {j}) |",
              f"| blocks run | {i} front + {b.num_hidden_layers - j} back = {config.num_hidden_layers} |",
              f"| forward FLOPs | {_fmt_flops(info.get('flops'))} ({info.get('flops_unit', 'per sequence')}) |",
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

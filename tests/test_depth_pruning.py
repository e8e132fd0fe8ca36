"""The depth-pruning benchmark on a tiny random Llama with SmolLM2's tokenizer: each method's pick checked against
an independent computation from transformers' own hidden states, the oracle against built stitched models, and
the report's retention and intervals."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from hf_klas import StitchedModel
from hf_klas.data.debian_descriptions import load_debian_descriptions
from hf_klas.data.wordnet_glosses import load_wordnet_glosses
from hf_klas.evaluation import perplexity
from hf_klas.loading import resolve_anchor
from hf_klas.study.depth_pruning import METHODS, DepthPruningOptions, run_depth_pruning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = resolve_anchor("smollm2-135m").load_preprocessor()
    torch.manual_seed(0)
    # wide enough that a block is ~5% of the FLOPs next to SmolLM2's 49k-token head, so 95% / 90% budgets cut
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    root = tmp_path_factory.mktemp("depth_pruning")
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    return str(root / "lm")


def options(lm, out, **kw):
    base = dict(anchor=lm, budgets=[0.95, 0.9], calibration_texts=8, validation_texts=6, test_texts=8,
                rouge_test_texts=3, rouge_validation_texts=2, train_texts=8, max_length=48, max_new_tokens=3,
                heal=["labels", "distill"], heal_steps=2, bootstrap_samples=200, out_dir=str(out), progress=False)
    base.update(kw)
    return DepthPruningOptions(**base)


def hidden_states(lm, texts, max_length):
    """Every block's input (index b = input of block b), from transformers' output_hidden_states."""
    from transformers import AutoModelForCausalLM

    anchor = resolve_anchor(lm)
    tok = anchor.load_preprocessor()
    model = AutoModelForCausalLM.from_pretrained(lm).eval()
    hs, masks = [], []
    for text in texts:  # one text at a time: no padding, so nothing depends on the tokenizer's pad token
        enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        hs.append(torch.stack(out.hidden_states[:-1]))  # the last entry is after the final norm: not a block input
        masks.append(enc["attention_mask"].bool())
    return hs, masks


def mean_cos(hs, masks, a, b):
    num, count = 0.0, 0
    for h, m in zip(hs, masks):
        num += float(torch.nn.functional.cosine_similarity(h[a][m].double(), h[b][m].double(), dim=-1).sum())
        count += int(m.sum())
    return num / count


def test_picks_match_independent_computations(tiny_lm, tmp_path):
    opts = options(tiny_lm, tmp_path, heal=["none"], budgets=[0.9])
    report = run_depth_pruning(opts)
    assert report["cuts"]["0.9"]["removed_blocks"] >= 1 and report["cuts"]["0.9"]["flops_fraction"] <= 0.9
    k = report["cuts"]["0.9"]["removed_blocks"]
    n = report["blocks"]
    cands = [(i, i + k) for i in range(1, n) if i + k <= n - 1]
    train = load_debian_descriptions("train", max_description_chars=opts.description_chars).shuffle(seed=opts.seed)
    cal = [p + " " + t for p, t in zip(train["prompt"][:8], train["target"][:8])]
    hs, masks = hidden_states(tiny_lm, cal, opts.max_length)
    bi = [1 - mean_cos(hs, masks, b, b + 1) for b in range(n - 1)]
    shortgpt = min(cands, key=lambda c: (sum(bi[c[0]:c[1]]), c))
    replaceme = min(cands, key=lambda c: (1 - mean_cos(hs, masks, c[0], c[1]), c))
    val = list(load_wordnet_glosses("validation", limit=6)["text"])
    tok = resolve_anchor(tiny_lm).load_preprocessor()
    ppl = {c: perplexity(StitchedModel.from_anchors(tiny_lm, front_blocks=c[0], back_start=c[1], calibration=cal,
                                                    max_length=opts.max_length, progress=False),
                         tok, val, max_length=opts.max_length, progress=False) for c in cands}
    rows = {r["method"]: r for r in report["rows"]}
    assert (rows["ShortGPT"]["front_blocks"], rows["ShortGPT"]["back_start"]) == shortgpt
    assert (rows["ReplaceMe"]["front_blocks"], rows["ReplaceMe"]["back_start"]) == replaceme
    oracle = (rows["oracle"]["front_blocks"], rows["oracle"]["back_start"])
    assert math.isclose(ppl[oracle], min(ppl.values()), rel_tol=1e-3)
    assert rows["ShortGPT"]["bridge"] == "identity" and rows["ReplaceMe"]["bridge"] == "least_squares"
    assert report["default_selector"] == "theta"
    # retention and the default-vs-peer interval, from the stored per-example values
    dense = report["dense"]["free"]
    for row in report["rows"]:
        e = row["free"]
        assert math.isclose(e["ppl_retention"], dense["wordnet_ppl"] / e["wordnet_ppl"], rel_tol=1e-9)
        if row["method"] != "hf_klas default":
            r = e["ppl_ratio_default_vs_this"]
            assert r["low"] <= r["ratio"] <= r["high"]
            mine = rows["hf_klas default"]["free"]["wordnet_ppl"]
            assert math.isclose(r["ratio"], mine / e["wordnet_ppl"], rel_tol=1e-6)
    assert (tmp_path / "depth_pruning.png").stat().st_size > 0
    assert "| 90% | ShortGPT |" in (tmp_path / "depth_pruning.md").read_text()


def test_healing_runs_both_recipes_and_chooses_on_validation(tiny_lm, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import depth_pruning as script

    report = script.main(["--anchor", tiny_lm, "--budgets", "0.95", "--calibration_texts", "8",
                          "--validation_texts", "6", "--test_texts", "6", "--rouge_test_texts", "2",
                          "--rouge_validation_texts", "2", "--train_texts", "8", "--max_length", "48",
                          "--max_new_tokens", "3", "--heal_steps", "2", "--bootstrap_samples", "100",
                          "--out_dir", str(tmp_path), "--progress", "false"])
    assert report["stages"] == ["free", "labels", "distill"]
    choice = report["healing_choice"]
    assert choice["chosen"] in ("labels", "distill")
    scores = choice["scores"]
    best = min(scores, key=lambda s: scores[s]["mean_log_wordnet_validation_ppl"])
    assert choice["chosen"] == best
    for row in report["rows"]:
        assert row["labels"]["wordnet_ppl"] != row["free"]["wordnet_ppl"]  # healing changed the model
        assert row["labels"]["wordnet_ppl"] != row["distill"]["wordnet_ppl"]
    assert len(report["rows"]) == len(METHODS)
    # an interrupted run continues: the stored parts answer, nothing is recomputed
    parts = json.loads((tmp_path / "depth_pruning.parts.json").read_text())["results"]
    assert "dense:distill" in parts and any(k.endswith(":labels") for k in parts)
    again = run_depth_pruning(DepthPruningOptions(
        anchor=tiny_lm, budgets=[0.95], calibration_texts=8, validation_texts=6, test_texts=6, rouge_test_texts=2,
        rouge_validation_texts=2, train_texts=8, max_length=48, max_new_tokens=3, heal_steps=2,
        bootstrap_samples=100, out_dir=str(tmp_path), progress=False))
    assert again["rows"] == report["rows"]


def test_bad_options_are_refused():
    from hf_klas.errors import HfKlasError

    with pytest.raises(HfKlasError, match="budgets"):
        DepthPruningOptions(budgets=[1.2])
    with pytest.raises(HfKlasError, match="healing recipe"):
        DepthPruningOptions(heal=["sft"])

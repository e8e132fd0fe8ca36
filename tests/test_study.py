"""Selection-quality study (hf_klas.study): statistics, the oracles' fast paths, and a --quick smoke run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from hf_klas.errors import HfKlasError  # noqa: E402
from hf_klas.study import (  # noqa: E402,E501
    QualityOptions,
    analyze_selector,
    kendall_tau_b,
    parse_selector,
    rankdata,
    run_quality,
    spearman,
)
from hf_klas.study.options import quick  # noqa: E402
from hf_klas.study.oracles import lm_self_stitch_oracle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---- statistics ------------------------------------------------------------------------------------------------
def test_rankdata_ties_and_inf():
    assert rankdata([3.0, 1.0, 3.0, math.inf]).tolist() == [2.5, 1.0, 2.5, 4.0]


def test_spearman_kendall_known_values():
    a = [1, 2, 3, 4, 5]
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, a[::-1]) == pytest.approx(-1.0)
    assert kendall_tau_b(a, a[::-1]) == pytest.approx(-1.0)
    # tau-b with ties: scipy.stats.kendalltau([1,2,2,3],[1,3,2,4]) = 0.912870929...
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9128709291752769)
    # spearman with ties: scipy.stats.spearmanr([1,2,2,3],[1,3,2,4]) = 0.9486832980505138
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert kendall_tau_b([0, math.inf, math.inf], [3, 2, 1]) == pytest.approx(-math.sqrt(2 / 3))


def test_analyze_selector_perfect_and_inverse():
    from hf_klas.evaluation.pareto import ParetoPoint

    q = np.array([0.5, 0.6, 0.7, 0.8, 0.55, 0.65])
    flops = np.array([1.0, 1.1, 2.0, 2.1, 1.2, 2.2])
    buckets = np.array([0, 0, 1, 1, 0, 1])
    pool = [{"name": str(k), "front_blocks": 1 + k // 3, "back_start": k % 3, "flops": f} for k, f in enumerate(flops)]
    anchors = [ParetoPoint("a", 1.0, 0, 0.5, kind="anchor"), ParetoPoint("b", 3.0, 0, 0.9, kind="anchor")]
    kw = dict(higher_is_better=True, tie_rank=np.arange(6), anchor_points=anchors, flops_range=(1.0, 3.0),
              edges=[1.0, 1.6, 2.3], grid=(2, 3))
    good = analyze_selector(-q, q[None], pool, buckets, **kw)
    assert good["spearman"] == pytest.approx(1.0) and good["top1"] == 1.0 and good["regret"] == 0.0
    assert good["recovery"] == 1.0 and good["recovery_k"] == 2
    bad = analyze_selector(q, np.stack([q, q + 0.01]), pool, buckets, **kw)
    assert bad["spearman"] == pytest.approx(-1.0) and bad["top1"] == 0.0 and bad["regret"] > 0
    assert bad["auc"] < good["auc"] and bad["recovery"] < 1.0
    assert bad["spearman_seed_std"] == pytest.approx(0.0)


def test_recovery_uses_klas_candidate_sets_with_tau_and_cover():
    """The paper's recovery: KLAS's own candidate set (argmin per bucket + within tau + cover) recalling the
    oracle's best of each bucket; a wider tau admits more, so it recalls at least as much."""
    from hf_klas.evaluation.pareto import ParetoPoint

    q = np.array([0.9, 0.5, 0.6, 0.8])  # oracle bests: index 0 (bucket 0), index 3 (bucket 1)
    score = np.array([1.04, 1.0, 2.0, 2.3])  # argmins 1 and 2; index 0 is within 5 % of bucket 0's best
    pool = [{"name": str(k), "front_blocks": 1, "back_start": k, "flops": f} for k, f in enumerate([1, 1.1, 2, 2.1])]
    kw = dict(higher_is_better=True, tie_rank=np.arange(4), flops_range=(1.0, 3.0), edges=[1.0, 1.5, 3.0],
              grid=(1, 4), anchor_points=[ParetoPoint("a", 1.0, 0, 0.5, kind="anchor")])
    buckets = np.array([0, 0, 1, 1])
    tight = analyze_selector(score, q[None], pool, buckets, tau=0.0, cover=False, **kw)
    loose = analyze_selector(score, q[None], pool, buckets, tau=0.05, cover=False, **kw)
    covered = analyze_selector(score, q[None], pool, buckets, tau=0.05, cover=True, **kw)
    assert tight["recovery"] == 0.0 and tight["set_size"] == 2
    assert loose["recovery"] == 0.5 and loose["set_size"] == 3
    assert covered["recovery"] == 1.0 and covered["set_size"] == 4  # back_start 3 gets covered
    assert 0.0 < loose["recovery_chance"] < 1.0


def test_selector_specs():
    assert parse_selector("klas") == ("klas:logit_lens", "klas", {})
    assert parse_selector("klas:probenet@eps_rel=0.1") == ("klas:probenet@eps_rel=0.1", "klas",
                                                            {"probe": "probenet", "eps_rel": 0.1})
    assert parse_selector("klas@last_denominator=median")[2] == {"last_denominator": "median"}
    assert parse_selector("cka") == ("cka", "cka", {})
    with pytest.raises(Exception, match="Unknown selector"):
        parse_selector("nope")


# ---- the fast self-stitch oracle is the stitched model -------------------------------------------------------
def test_lm_fast_path_matches_stitched_model():
    from tiny import llama_pair

    from hf_klas import StitchedModel
    from hf_klas.evaluation import perplexity

    _, model = llama_pair(vocab=128)
    g = torch.Generator().manual_seed(1)
    cal = [{"input_ids": torch.randint(3, 128, (4, 16), generator=g),
            "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(3)]
    ids = torch.randint(3, 128, (6, 12), generator=g)
    ev = [{"input_ids": ids[:3], "attention_mask": torch.ones(3, 12, dtype=torch.long)},
          {"input_ids": ids[3:], "attention_mask": torch.ones(3, 12, dtype=torch.long)}]
    ev[1]["attention_mask"][0, 8:] = 0  # right padding in the second batch
    rows = [ids[k] for k in range(6)]
    rows[3] = rows[3][:8]
    configs = [(1, 2), (2, 4), (1, 5)]
    fast = {k: v["perplexity"] for k, v in lm_self_stitch_oracle(model, configs, cal, ev).items()}
    for i, j in configs:
        stitched = StitchedModel.from_anchors(model, None, front_blocks=i, back_start=j, calibration=cal,
                                              progress=False)
        ref = perplexity(stitched, None, rows, max_length=None, batch_size=3, progress=False)
        assert fast[(i, j)] == pytest.approx(ref, rel=1e-5)


# ---- --quick smoke run on tiny random anchors -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_anchors(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    from hf_klas.data.fashion_mnist import FASHION_MNIST_LABELS, make_image_processor
    from hf_klas.loading import resolve_anchor

    root = tmp_path_factory.mktemp("quality_anchors")
    labels = dict(enumerate(FASHION_MNIST_LABELS))
    paths = []
    torch.manual_seed(0)
    for name, (hidden, layers, heads) in {"vit-a": (32, 2, 2), "vit-b": (48, 3, 3)}.items():
        cfg = ViTConfig(image_size=28, patch_size=7, num_channels=3, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, id2label=labels,
                        label2id={v: k for k, v in labels.items()})
        ViTForImageClassification(cfg).save_pretrained(root / name)
        make_image_processor().save_pretrained(root / name)
        paths.append(str(root / name))
    tok = resolve_anchor("smollm2-135m").load_preprocessor()
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=True, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    return paths[0], paths[1], str(root / "lm")


def test_lm_fast_generation_matches_stitched_model(tiny_anchors):
    """The oracle's swapped-block generation (pre-hook stitch, original layer indices, KV cache) is the built
    stitched model's greedy generation."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_klas import StitchedModel
    from hf_klas.evaluation import generate_texts
    lm_dir = tiny_anchors[2]
    model = LlamaForCausalLM.from_pretrained(lm_dir).eval()
    tok = AutoTokenizer.from_pretrained(lm_dir)
    g = torch.Generator().manual_seed(2)
    cal = [{"input_ids": torch.randint(3, len(tok), (4, 16), generator=g),
            "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(2)]
    prompts = ["Package description:\nA tiny tool.\nOne-line summary:", "Hello there, how are", "x"]
    configs = [(1, 3), (2, 4)]
    res = lm_self_stitch_oracle(model, configs, cal, cal[:1], tokenizer=tok, prompts=prompts, max_new_tokens=5,
                                batch_size=2)
    before = generate_texts(model, tok, prompts, max_new_tokens=5, progress=False)
    for i, j in configs:
        stitched = StitchedModel.from_anchors(model, None, front_blocks=i, back_start=j, calibration=cal,
                                              progress=False)
        ref = generate_texts(stitched, tok, prompts, max_new_tokens=5, batch_size=2, progress=False)
        assert res[(i, j)]["generations"] == ref
    # the anchor is left intact
    assert len(model.model.layers) == 5 and not model.model.layers[3]._forward_pre_hooks
    assert generate_texts(model, tok, prompts, max_new_tokens=5, progress=False) == before


def _check_report(report: dict):
    assert report["format"] == "hf_klas.selection_quality"
    assert {st["kind"] for st in report["studies"]} == {"vit", "lm_self_stitch"}
    assert report["data"]["vit"]["files_sha256"] and report["data"]["lm"]["calibration_packages"]
    for st in report["studies"]:
        pool = st["oracle"]["configs"]
        assert pool and all(len(c["quality_per_seed"]) == len(st["oracle"]["seeds"]) for c in pool)
        assert "{" not in st["oracle"]["description"], st["oracle"]["description"]  # an unformatted f-string
        assert "oracle" in st["selectors"]
        for label, r in st["selectors"].items():
            assert "error" not in r, (label, r)
            for key in ("spearman", "kendall", "spearman_within_bucket", "kendall_within_bucket", "spearman_init"):
                v = r.get(key)
                assert v is None or -1.0 <= v <= 1.0, (label, key, v)
            for key in ("top1", "top1_chance", "recovery", "recovery_chance"):
                v = r.get(key)
                assert v is None or 0.0 <= v <= 1.0, (label, key, v)
            assert r.get("regret") is None or r["regret"] >= -1e-12
            assert r["auc"] is not None and math.isfinite(r["auc"])
            assert r["candidates"]
        expected = {"oracle", "klas:logit_lens", "klas:tuned_lens", "theta:logit_lens", "snnet", "cka", "mse",
                    "ce:logit_lens", "random"}
        assert st["metric"] in {"top1_accuracy", "perplexity", "rougeL"}
        if st["kind"] == "vit":
            expected |= {"klas:probenet", "theta:probenet", "klas:logit_lens@eps_rel=0.1"}
            assert len(st["oracle"]["seeds"]) == 2 and st["protocol"] in ("demo", "full")
            assert all(c["quality_std"] is not None for c in pool)
            # both protocols train every weight, so the anchors get the same finetune per seed (shipped kept)
            for a in st["anchors"]:
                assert a["finetuned"] and len(a["metric_per_seed"]) == 2 and 0 <= a["metric_shipped"] <= 1
                assert a["metric"] == pytest.approx(sum(a["metric_per_seed"]) / 2)
            vs = st["versus_cheaper_anchor"]
            cheap = min(st["anchors"], key=lambda a: a["flops"])
            assert vs["anchor"] == cheap["name"] and vs["anchor_metric"] == cheap["metric"]
            assert vs["best_quality"] == max(c["quality"] for c in pool)
            assert vs["difference"] == pytest.approx(vs["best_quality"] - cheap["metric"])
            assert vs["low"] <= vs["difference"] <= vs["high"]
            assert vs["configs_at_least"] == sum(c["quality"] >= cheap["metric"] for c in pool)
            assert "validation" in st["oracle"]["description"] and st["evaluation_images"] == 64
        else:
            expected |= {"block_influence", "ls_replacement", "klas:logit_lens@last_denominator=median"}
        assert expected <= set(st["selectors"]), expected - set(st["selectors"])


def test_quick_run_via_benchmark_script(tiny_anchors, tmp_path):
    """The CI smoke test: benchmarks/selection_quality.py --quick on tiny random anchors."""
    import importlib.util

    front, back, lm = tiny_anchors
    spec = importlib.util.spec_from_file_location("selection_quality", REPO / "benchmarks" / "selection_quality.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    summary = script.main(["--quick", "--vit_pairs", f"{front}:{back}", "--lm_anchor", lm, "--out_dir",
                           str(tmp_path), "--name", "sq", "--progress", "false"])
    report = json.loads((tmp_path / "sq.json").read_text())
    _check_report(report)
    names = [st["name"] for st in report["studies"]]
    assert [st["protocol"] for st in report["studies"]] == ["demo", "full", "training-free", "lora",
                                                            "training-free", "lora"], names
    assert report["data"]["vit"]["test"] == "not read"
    assert [st["metric"] for st in report["studies"]][2:] == ["perplexity", "perplexity", "rougeL", "rougeL"]
    lora = report["studies"][3]["oracle"]["configs"]
    assert lora and len({c["bucket"] for c in lora}) == 1  # the quick run: one LoRA bucket
    md = (tmp_path / "sq.md").read_text()
    assert "| selector |" in md and "klas:logit_lens" in md and "recovery" in md and "## Verdict" in md
    # the default ran vit and lm side by side in two processes; one study in this process gives the same numbers
    assert report["jobs"] == 2 and "side by side in 2 processes" in md
    assert "===== process1 =====" in (tmp_path / "sq.log").read_text()
    alone = script.main(["--quick", "--studies", "lm", "--jobs", "1", "--lm_anchor", lm, "--out_dir",
                         str(tmp_path / "alone"), "--name", "sq", "--progress", "false"])
    assert alone["studies"] == {k: v for k, v in summary["studies"].items() if k.startswith(Path(lm).name)}
    assert (tmp_path / "sq.png").stat().st_size > 0 and (tmp_path / "sq.log").is_file()
    assert summary["json"] == str(tmp_path / "sq.json") and summary["verdict"]

    # re-analysis from the JSON (no model runs) reproduces every metric
    again = run_quality(QualityOptions(from_json=str(tmp_path / "sq.json"), out_dir=str(tmp_path / "re"), name="sq",
                                       random_repeats=report["options"]["random_repeats"], progress=False))
    redo = json.loads((tmp_path / "re" / "sq.json").read_text())
    assert again["studies"] == summary["studies"]
    assert redo["reanalysis"]["from"] == [str(tmp_path / "sq.json")]

    # the same report split into a vit run and an lm run (two machines, say) combines back into it
    for part, keep in (("vit", ("demo", "full")), ("lm", ("training-free", "lora"))):
        piece = dict(report, options=dict(report["options"], studies=[part]), command=f"run --studies {part}",
                     studies=[st for st in report["studies"] if st["protocol"] in keep],
                     data={part: report["data"][part]}, wall_seconds=report["wall_seconds"] / 2)
        (tmp_path / f"{part}.json").write_text(json.dumps(piece))
    parts = [str(tmp_path / "vit.json"), str(tmp_path / "lm.json")]
    combined = run_quality(QualityOptions(from_json=parts, out_dir=str(tmp_path / "both"), name="sq",
                                          random_repeats=report["options"]["random_repeats"], progress=False))
    assert combined["studies"] == summary["studies"] and combined["verdict"] == summary["verdict"]
    both = json.loads((tmp_path / "both" / "sq.json").read_text())
    assert both["data"] == report["data"] and [p["command"] for p in both["parts"]] == ["run --studies vit",
                                                                                          "run --studies lm"]
    assert "Combined from runs of separate studies" in (tmp_path / "both" / "sq.md").read_text()
    with pytest.raises(HfKlasError, match="more than one report"):
        run_quality(QualityOptions(from_json=[parts[0], parts[0]], out_dir=str(tmp_path / "x"), progress=False))
    (tmp_path / "old.json").write_text(json.dumps(dict(json.loads((tmp_path / "lm.json").read_text()),
                                                       hf_klas_version="0.0.1")))
    with pytest.raises(HfKlasError, match="different hf_klas versions"):
        run_quality(QualityOptions(from_json=[parts[0], str(tmp_path / "old.json")], out_dir=str(tmp_path / "x"),
                                   progress=False))


def test_the_study_never_reads_test_data(tiny_anchors, tmp_path, monkeypatch):
    """The study picks defaults, so no test image or test text may enter it: loading either fails here."""
    import hf_klas.data.debian_descriptions as debian
    import hf_klas.study.lm as lm_study
    import hf_klas.study.vit as vit_study

    real_images, real_texts = vit_study.load_fashion_mnist_arrays, debian.load_debian_descriptions
    asked = []

    def images(split, *a, **k):
        asked.append(split)
        assert split != "test", "the study read Fashion-MNIST test images"
        return real_images(split, *a, **k)

    def texts(split="train", *a, **k):
        asked.append(split)
        assert split != "test", "the study read Debian test descriptions"
        return real_texts(split, *a, **k)

    monkeypatch.setattr(vit_study, "load_fashion_mnist_arrays", images)
    monkeypatch.setattr(lm_study, "load_debian_descriptions", texts)
    front, back, lm = tiny_anchors
    run_quality(QualityOptions(quick=True, jobs=1, vit_pairs=[f"{front}:{back}"], lm_anchor=lm,
                               out_dir=str(tmp_path), progress=False, vit_selectors=["klas", "random"],
                               lm_selectors=["theta", "random"]))
    assert {"train", "validation"} <= set(asked)


def test_cli_lists_quality_options():
    from hf_klas.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["quality", "--quick", "--studies", "vit", "--tau", "0.1"])
    assert args.quick is True and args.studies == ["vit"] and args.tau == 0.1


def test_bad_options_fail_before_work(tmp_path):
    from hf_klas.errors import HfKlasError

    with pytest.raises(HfKlasError, match="Unknown studies"):
        run_quality(QualityOptions(studies=["nope"], out_dir=str(tmp_path)))
    with pytest.raises(HfKlasError, match="Unknown selector"):
        run_quality(QualityOptions(studies=["vit"], vit_selectors=["bogus"], out_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


# ---- the LoRA oracle's init and the stored, resumable parts ---------------------------------------------------
def test_shared_least_squares_fits_equal_from_anchors():
    """The LoRA oracle starts from fits of one anchor pass: the same stitch from_anchors(calibration=...) fits."""
    from tiny import llama_pair

    from hf_klas import StitchedModel
    from hf_klas.study.oracles import block_outputs, self_stitch_fits

    _, model = llama_pair(vocab=128)
    g = torch.Generator().manual_seed(3)
    cal = [{"input_ids": torch.randint(3, 128, (4, 16), generator=g),
            "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(2)]
    cal[1]["attention_mask"][2, 10:] = 0
    configs = [(1, 3), (2, 3), (2, 5)]
    fits = {key: (w, b) for key, w, b in self_stitch_fits(block_outputs(model, cal), cal, configs)}
    assert sorted(fits) == sorted(configs)
    for i, j in configs:
        ref = StitchedModel.from_anchors(model, None, front_blocks=i, back_start=j, calibration=cal, progress=False)
        torch.testing.assert_close(fits[(i, j)][0], ref.stitch.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fits[(i, j)][1], ref.stitch.bias.detach(), rtol=1e-4, atol=1e-5)


def test_lm_study_resumes_from_stored_parts(tiny_anchors, tmp_path):
    """A stored part is read back, not recomputed; a partial one is continued; resume=false starts over; the
    parts are deleted once the report is written; other options get another directory."""
    from hf_klas.loading import resolve_anchor
    from hf_klas.study.lm import lm_store
    from hf_klas.study.parts import pair_key

    lm = tiny_anchors[2]
    base = dict(quick=True, studies=["lm"], jobs=1, lm_anchor=lm, progress=False, name="r")

    def ppl(summary_json):
        st = next(s for s in json.loads(Path(summary_json).read_text())["studies"]
                  if s["protocol"] == "training-free" and s["metric"] == "perplexity")
        return {(c["front_blocks"], c["back_start"]): c["quality"] for c in st["oracle"]["configs"]}

    ref = ppl(run_quality(QualityOptions(**base, out_dir=str(tmp_path / "ref")))["json"])
    assert not (tmp_path / "ref" / "r.parts").exists()  # deleted with the report written

    out = tmp_path / "run"
    shared = run_quality(QualityOptions(**base, out_dir=str(out), lm_parts=["free"]))
    assert shared["parts"] == ["free"] and not (out / "r.json").exists()
    store = lm_store(quick(QualityOptions(**base, out_dir=str(out))), resolve_anchor(lm))
    assert Path(shared["parts_dir"]) == store.dir and (store.dir / "key.json").is_file()
    free = store.load("free")
    assert free["complete"] and len(free["results"]) == len(ref)
    keys = sorted(free["results"])
    kept, dropped = keys[0], keys[1:3]
    free["results"][kept]["perplexity"] = 1234.5  # a sentinel: reused, not recomputed
    for k in dropped:
        del free["results"][k]
    store.save("free", dict(free, complete=False))  # as an interrupted run leaves it

    resumed = ppl(run_quality(QualityOptions(**base, out_dir=str(out)))["json"])
    kept_ij = tuple(map(int, kept.split(",")))
    assert resumed[kept_ij] == 1234.5
    assert {k: v for k, v in resumed.items() if k != kept_ij} == pytest.approx(
        {k: v for k, v in ref.items() if k != kept_ij}, rel=1e-6)
    assert not store.dir.exists()

    run_quality(QualityOptions(**base, out_dir=str(out), lm_parts=["free"]))
    free = store.load("free")
    free["results"][pair_key(*kept_ij)]["perplexity"] = 1234.5
    store.save("free", free)
    fresh = ppl(run_quality(QualityOptions(**base, out_dir=str(out), resume=False))["json"])
    assert fresh == pytest.approx(ref, rel=1e-6)

    other = lm_store(quick(QualityOptions(**base, out_dir=str(out), lm_lora_lr=1e-3)), resolve_anchor(lm))
    assert other.dir != store.dir and other.dir.parent == store.dir.parent


def test_lm_parts_options_are_checked():
    with pytest.raises(HfKlasError, match="lm_parts"):
        QualityOptions(studies=["lm"], lm_parts=["nope"])
    with pytest.raises(HfKlasError, match="studies=\\['vit', 'lm'\\]"):
        QualityOptions(lm_parts=["free"])
    with pytest.raises(HfKlasError, match="not in lm_lora_seeds"):
        QualityOptions(studies=["lm"], lm_parts=["lora@7"])
    with pytest.raises(HfKlasError, match="lm_parts"):
        QualityOptions(studies=["lm"], lm_parts=["all", "free"])

"""hf_klas.evaluation: offline ROUGE, perplexity, accuracy, generation, Pareto front/AUC/plot/table."""

from __future__ import annotations

import json
import math

import evaluate
import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer, scoring
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_outputs import ImageClassifierOutput

from hf_klas.errors import DataError
from hf_klas.evaluation import (
    ROUGE_METRIC_DIR,
    ParetoPoint,
    front_auc,
    generate_texts,
    load_rouge,
    pareto_front,
    perplexity,
    plot_pareto,
    top1_accuracy,
    write_pareto_table,
)

PREDS = ["the cat sat on the mat", "a quick brown fox\njumps over dogs", "running fast is fun", "hello"]
REFS = ["a cat was sitting on the mat", "the quick brown fox\nleaped over the lazy dogs", "he runs fast", "bye"]
TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


# ----------------------------------------------------------------------------------------------- helpers
def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII char (ids 32..126), specials 0..3: a tokenizer with no download."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({chr(i): i for i in range(32, 127)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def direct_rouge(preds, refs, use_stemmer, aggregate, seed=0):
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=use_stemmer)
    scores = [scorer.score(r, p) for r, p in zip(refs, preds)]
    if not aggregate:
        return {k: [s[k].fmeasure for s in scores] for k in TYPES}
    agg = scoring.BootstrapAggregator()
    for s in scores:
        agg.add_scores(s)
    np.random.seed(seed)
    return {k: v.mid.fmeasure for k, v in agg.aggregate().items()}


# ----------------------------------------------------------------------------------------------- ROUGE
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score(use_stemmer):
    metric = load_rouge()
    per = metric.compute(predictions=PREDS, references=REFS, use_aggregator=False, use_stemmer=use_stemmer)
    want = direct_rouge(PREDS, REFS, use_stemmer, aggregate=False)
    assert set(per) == set(TYPES)
    for k in TYPES:
        assert per[k] == pytest.approx(want[k], abs=1e-12)
    # evaluate runs _compute under temp_seed(metric.seed): the bootstrap mid is reproducible per seed
    metric = load_rouge(seed=0)
    agg = metric.compute(predictions=PREDS, references=REFS, use_stemmer=use_stemmer)
    want = direct_rouge(PREDS, REFS, use_stemmer, aggregate=True, seed=0)
    for k in TYPES:
        assert agg[k] == pytest.approx(want[k], abs=1e-12)
    assert metric.compute(predictions=PREDS, references=REFS, use_stemmer=use_stemmer) == agg


def test_rouge_semantics():
    metric = load_rouge()
    # rougeLsum splits on newlines, rougeL does not: a reordered two-line summary separates them.
    out = metric.compute(predictions=["b c\na b"], references=["a b\nb c"], use_aggregator=False)
    assert out["rougeLsum"][0] == pytest.approx(1.0) and out["rougeL"][0] < 1.0
    # stemming: "running"/"runs" match only with the stemmer.
    off = metric.compute(predictions=["running"], references=["runs"], use_aggregator=False)["rouge1"][0]
    on = metric.compute(predictions=["running"], references=["runs"], use_aggregator=False,
                        use_stemmer=True)["rouge1"][0]
    assert off == 0.0 and on == 1.0
    assert metric.compute(predictions=["x y"], references=["x y"], rouge_types=["rouge1"]) == {"rouge1": 1.0}
    multi = metric.compute(predictions=["a b"], references=[["c d", "a b"]], use_aggregator=False)
    assert multi["rouge1"] == [1.0]


def test_rouge_loads_offline_from_local_folder():
    metric = evaluate.load(ROUGE_METRIC_DIR, seed=1)
    assert metric.name == "rouge"
    assert metric.compute(predictions=PREDS, references=REFS) == pytest.approx(
        load_rouge(seed=1).compute(predictions=PREDS, references=REFS))


# ----------------------------------------------------------------------------------------------- perplexity
def test_perplexity_equals_model_loss_and_ignores_padding():
    model, tok = tiny_llama(), char_tokenizer()
    torch.manual_seed(1)
    ids = torch.randint(4, 128, (3, 12))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    ppl = perplexity(model, None, ids, batch_size=3, progress=False)
    assert ppl == pytest.approx(math.exp(float(loss)), rel=1e-5)

    texts = ["hello world", "a much longer sentence with more characters in it", "mid length text"]
    side = tok.padding_side
    batched = perplexity(model, tok, texts, batch_size=3, progress=False)
    single = perplexity(model, tok, texts, batch_size=1, progress=False)
    rows = [torch.tensor(tok(t)["input_ids"]) for t in texts]
    as_list = perplexity(model, None, rows, batch_size=2, progress=False)
    assert batched == pytest.approx(single, rel=1e-5) and as_list == pytest.approx(single, rel=1e-5)
    assert tok.padding_side == side and tok.pad_token is None  # restored
    # token-weighted: the pooled value is exp(sum NLL / sum tokens), not a mean of per-text perplexities
    with torch.no_grad():
        nll = [float(model(input_ids=r[None], labels=r[None]).loss) * (len(r) - 1) for r in rows]
    assert single == pytest.approx(math.exp(sum(nll) / sum(len(r) - 1 for r in rows)), rel=1e-5)


# ----------------------------------------------------------------------------------------------- accuracy
class _ArgmaxModel(torch.nn.Module):
    """Hand-made classifier: logits are the first 3 pixel values, so the prediction is known by hand."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values=None, img=None):
        x = pixel_values if pixel_values is not None else img
        return ImageClassifierOutput(logits=x.flatten(1)[:, :3] + self.dummy)


def test_top1_accuracy_dataset_loader_and_tuples():
    import datasets

    torch.manual_seed(0)
    x = torch.randn(10, 1, 2, 2)
    pred = x.flatten(1)[:, :3].argmax(-1)
    labels = pred.clone()
    labels[:3] = (labels[:3] + 1) % 3  # 3 of 10 wrong -> 0.7
    ds = datasets.Dataset.from_dict({"pixel_values": x.numpy(), "labels": labels.numpy()})
    model = _ArgmaxModel()
    assert top1_accuracy(model, ds, batch_size=4, progress=False) == pytest.approx(0.7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=3)
    assert top1_accuracy(model, loader, batch_size=3, progress=False) == pytest.approx(0.7)
    renamed = ds.rename_columns({"pixel_values": "img", "labels": "y"})
    assert top1_accuracy(model, renamed, 5, pixel_key="img", label_key="y", progress=False) == pytest.approx(0.7)
    with pytest.raises(DataError):
        top1_accuracy(model, renamed, 5, progress=False)


# ----------------------------------------------------------------------------------------------- generation
def test_generate_texts_returns_continuation_and_left_padding_matches_unbatched():
    model, tok = tiny_llama(seed=3), char_tokenizer()
    prompts = ["abc", "the longest prompt of all", "hello there"]
    side = tok.padding_side
    batched = generate_texts(model, tok, prompts, max_new_tokens=6, batch_size=3, progress=False)
    single = [generate_texts(model, tok, [p], max_new_tokens=6, batch_size=1, progress=False)[0]
              for p in prompts]
    assert batched == single
    assert tok.padding_side == side and tok.pad_token is None
    enc = tok(prompts[1], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    full = tok.decode(out[0], skip_special_tokens=True)
    assert full == prompts[1] + batched[1]  # only the continuation is returned
    assert generate_texts(model, tok, [], progress=False) == []


# ----------------------------------------------------------------------------------------------- Pareto
def _points():
    return [
        ParetoPoint("small", 100, 1, 0.50, kind="anchor"),
        ParetoPoint("s1", 150, 1, 0.60, config={"front_blocks": 1, "back_start": 1}, selector="klas"),
        ParetoPoint("s2", 175, 1, 0.55, config={"front_blocks": 2, "back_start": 1}, selector="snnet"),
        ParetoPoint("s3", 250, 1, 0.80, config={"front_blocks": 3, "back_start": 1}, selector="klas"),
        ParetoPoint("big", 300, 2, 0.90, kind="anchor"),
    ]


def test_pareto_front_drops_dominated_point():
    front = pareto_front(_points())
    assert [p.name for p in front] == ["small", "s1", "s3", "big"]  # s2: costlier and worse than s1
    pts = _points() + [ParetoPoint("nan", 120, 1, float("nan"))]
    assert [p.name for p in pareto_front(pts)] == ["small", "s1", "s3", "big"]


def test_front_auc_by_hand():
    # x = 0, .25, .75, 1 -> .50*.25 + .60*.50 + .80*.25 = .625 (s2 is below the curve; big adds no width)
    assert front_auc(_points(), 100, 300) == pytest.approx(0.625)
    # clipping: a point cheaper than the small anchor counts from x=0; one dearer than big adds nothing
    pts = _points() + [ParetoPoint("cheap", 50, 1, 0.55), ParetoPoint("dear", 400, 3, 1.0)]
    assert front_auc(pts, 100, 300) == pytest.approx(0.55 * 0.25 + 0.60 * 0.5 + 0.80 * 0.25)
    # cheapest point above flops_min: its value is extended back to x=0
    pts = [ParetoPoint("s1", 150, 1, 0.6), ParetoPoint("big", 300, 2, 0.9, kind="anchor")]
    assert front_auc(pts, 100, 300) == pytest.approx(0.6)
    assert front_auc(_points(), 100, 300, metric_range=(0.5, 1.0)) == pytest.approx((0.625 - 0.5) / 0.5)
    with pytest.raises(DataError):
        front_auc(_points(), 300, 100)


def test_lower_is_better_front_and_auc():
    pts = [ParetoPoint("small", 100, 1, 30.0, kind="anchor"), ParetoPoint("s1", 150, 1, 20.0),
           ParetoPoint("s2", 175, 1, 25.0), ParetoPoint("s3", 250, 1, 12.0),
           ParetoPoint("big", 300, 2, 10.0, kind="anchor")]
    assert [p.name for p in pareto_front(pts, higher_is_better=False)] == ["small", "s1", "s3", "big"]
    # running minimum: 30*.25 + 20*.5 + 12*.25 = 20.5
    assert front_auc(pts, 100, 300, higher_is_better=False) == pytest.approx(20.5)
    assert front_auc(pts, 100, 300, higher_is_better=False, metric_range=(10, 30)) == pytest.approx(0.525)


def test_table_and_plot_are_written(tmp_path):
    pts = _points()
    table = write_pareto_table(pts, tmp_path / "out" / "pareto.json", metric_name="accuracy")
    data = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert data["front"] == ["small", "s1", "s3", "big"] and data["auc"] == pytest.approx(0.625)
    assert data["flops_min"] == 100 and data["flops_max"] == 300 and "attainment" in data["auc_definition"]
    assert data["by_selector"]["snnet"]["front"] == ["small", "s2", "big"]
    # snnet alone: .50*.375 + .55*.625
    assert data["by_selector"]["snnet"]["auc"] == pytest.approx(0.5 * 0.375 + 0.55 * 0.625)
    assert len(data["points"]) == 5 and table["auc"] == data["auc"]
    series = {"klas": [p for p in pts if p.selector != "snnet"], "snnet": [p for p in pts if p.selector != "klas"]}
    big = [ParetoPoint(p.name, p.flops * 1e7, p.params, p.metric, p.kind, p.config, p.selector) for p in pts]
    for name, s in (("a.png", series), ("b.png", {"all": big})):
        path = plot_pareto(s, tmp_path / name, metric_name="accuracy", title="test")
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"

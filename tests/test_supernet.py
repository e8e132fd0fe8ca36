"""SN-Net-style supernet: exact extraction, memory, least-squares init, sampling, training, persistence, plan runner."""

from __future__ import annotations

import collections

import datasets
import pytest
import torch
from tiny import llama_pair, vision_pair
from transformers import TrainingArguments

import hf_klas  # noqa: F401
from hf_klas import StitchedModel, StitchedModelForCausalLM, StitchedModelForImageClassification
from hf_klas.errors import HfKlasError, StitchPointError
from hf_klas.training import CausalLMCollator, StitchedSupernet, StitchTrainer, train_supernet

LM_CONFIGS = [(1, 2), (2, 3), (4, 5), (3, 0), (2, 1), (4, 2)]


@pytest.fixture(scope="module")
def pair():
    return llama_pair()


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 128, (24,), generator=g) for _ in range(6)]


def ids(batch=2, length=9, seed=1):
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_extracted_models_reproduce_the_supernet_exactly(pair, calib):
    f, b = pair
    net = StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS, calibration=calib, progress=False)
    with torch.no_grad():  # as if trained: every stitch and an anchor weight moved
        for lin in net.stitches.values():
            lin.weight.add_(0.01 * torch.randn_like(lin.weight))
        net.core.back.layers[4].mlp.up_proj.weight.mul_(1.1)
    x = ids()
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    for i, j in LM_CONFIGS:
        model = net.extract(i, j)
        assert type(model) is StitchedModelForCausalLM
        assert (model.config.front_blocks, model.config.back_start) == (i, j)
        assert len(model.front_blocks) == i and len(model.back_blocks) == 6 - j
        with torch.no_grad():
            want = net(input_ids=x, attention_mask=mask, stitch_config=(i, j)).logits
            got = model(input_ids=x, attention_mask=mask, use_cache=False).logits
            cached = model(input_ids=x, attention_mask=mask).logits
        assert torch.equal(got, want), (i, j)
        assert torch.allclose(cached, want, atol=1e-6)
    # extracted weights are copies, not views of the supernet
    model = net.extract(2, 3)
    with torch.no_grad():
        model.stitch.weight.zero_()
    assert net.stitches["2_3"].weight.abs().sum() > 0


def test_vision_extraction_is_exact_and_keeps_labels():
    small, big = vision_pair()
    net = StitchedSupernet.from_anchors(small, big, configs=[(1, 1), (2, 2), (3, 0), (3, 3)],
                                        calibration=[torch.randn(8, 1, 8, 8)], progress=False, sampling="flops")
    x = torch.randn(3, 1, 8, 8)
    for i, j in net.configs:
        model = net.extract(i, j)
        assert type(model) is StitchedModelForImageClassification
        assert model.config.id2label == big.config.id2label
        with torch.no_grad():
            assert torch.equal(model(pixel_values=x).logits, net(pixel_values=x, stitch_config=(i, j)).logits)


def test_memory_grows_only_by_the_stitch_layers(pair):
    f, b = pair
    two = StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS[:2], progress=False)
    six = StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS, progress=False)
    stitch = 64 * 96 + 96  # Linear(64 -> 96) with bias
    assert six.num_parameters() - two.num_parameters() == 4 * stitch
    # the anchors are held once: front embeddings + every block of both anchors, back norm and head
    anchors = sum(p.numel() for p in f.model.parameters()) - f.model.norm.weight.numel()
    anchors += sum(p.numel() for p in b.model.layers.parameters())
    anchors += b.model.norm.weight.numel() + b.lm_head.weight.numel()
    assert two.num_parameters() == anchors + 2 * stitch


def test_least_squares_init_matches_the_single_stitch_fit(pair, calib):
    f, b = pair
    net = StitchedSupernet.from_anchors(f, b, configs=[(2, 3), (1, 0)], calibration=calib, progress=False)
    assert net.stitch_init == "least_squares"
    for i, j in net.configs:
        single = StitchedModel.from_anchors(f, b, front_blocks=i, back_start=j, calibration=calib, progress=False)
        assert torch.allclose(net.stitches[f"{i}_{j}"].weight, single.stitch.weight, atol=1e-6)
        assert torch.allclose(net.stitches[f"{i}_{j}"].bias, single.stitch.bias, atol=1e-6)
    identity = StitchedSupernet.from_anchors(f, b, configs=[(2, 3)], progress=False)
    assert identity.stitch_init == "identity"
    assert torch.equal(identity.stitches["2_3"].weight, torch.eye(96, 64))


def test_sampling_uniform_and_flops_grouped(pair):
    f, b = pair
    uni = StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS, progress=False, seed=3)
    counts = collections.Counter(uni.sample_index(k) for k in range(3000))
    assert set(counts) == set(range(len(LM_CONFIGS)))
    assert max(counts.values()) / min(counts.values()) < 1.3
    assert [uni.sample_index(k) for k in range(20)] == [uni.sample_index(k) for k in range(20)]  # pure function
    grouped = StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS, progress=False, sampling="flops", num_buckets=3)
    buckets = collections.Counter(grouped.buckets[grouped.sample_index(k)] for k in range(3000))
    assert set(buckets) == set(grouped.buckets)
    assert max(buckets.values()) / min(buckets.values()) < 1.3  # each FLOPs group equally often
    # training forwards advance the sampler; eval forwards run the dearest config and do not
    x = ids()
    uni.train()
    with torch.no_grad():
        uni(input_ids=x)
        uni(input_ids=x)
    assert int(uni.sample_step) == 2
    uni.eval()
    with torch.no_grad():
        out = uni(input_ids=x).logits
        assert torch.equal(out, uni(input_ids=x, stitch_config=uni.dearest_config).logits)
        with uni.use_config(1, 2):
            assert torch.equal(uni(input_ids=x).logits, uni(input_ids=x, stitch_config=(1, 2)).logits)
    assert int(uni.sample_step) == 2
    with pytest.raises(StitchPointError, match="not in this supernet"):
        uni.extract(3, 3)
    with pytest.raises(HfKlasError, match="sampling"):
        StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS, sampling="importance", progress=False)
    with pytest.raises(StitchPointError):
        StitchedSupernet.from_anchors(f, b, configs=[(5, 0)], progress=False)


def _lm_data(n=16, length=12):
    rows = [[3 + (5 * k + t) % 120 for t in range(length)] for k in range(n)]
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})


def test_supernet_training_improves_every_configuration(pair, calib, tmp_path):
    f, b = pair
    configs = LM_CONFIGS[:4]
    net = StitchedSupernet.from_anchors(f, b, configs=configs, calibration=calib, progress=False)
    ds = _lm_data()
    batch = CausalLMCollator(0)([ds[k] for k in range(len(ds))])

    def losses():
        with torch.no_grad():
            return [float(net(**batch, stitch_config=c).loss) for c in configs]

    before = losses()
    anchor_before = net.core.front.layers[0].self_attn.q_proj.weight.clone()
    args = TrainingArguments(output_dir=str(tmp_path / "sn"), per_device_train_batch_size=8, max_steps=24,
                             learning_rate=1e-2, lr_scheduler_type="constant", save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, seed=0, logging_steps=100)
    trainer, out = train_supernet(net, args, ds, mode="full")
    assert isinstance(trainer, StitchTrainer) and out.global_step == 24
    assert int(net.sample_step) == 24
    after = losses()
    assert all(a < bf for a, bf in zip(after, before)), (before, after)
    assert not torch.equal(anchor_before, net.core.front.layers[0].self_attn.q_proj.weight)
    lrs = sorted({g["initial_lr"] for g in trainer.optimizer.param_groups})
    assert lrs == [pytest.approx(1e-3), pytest.approx(1e-2)]  # anchors at 0.1x, stitches at 1x


def test_save_and_load_round_trip(pair, tmp_path):
    f, b = pair
    net = StitchedSupernet.from_anchors(f, b, configs=LM_CONFIGS[:3], progress=False, sampling="flops", seed=7)
    with torch.no_grad():
        net.stitches["1_2"].bias.fill_(0.5)
        net.sample_step.fill_(11)
    net.save_pretrained(tmp_path / "sn")
    assert sorted(p.name for p in (tmp_path / "sn").iterdir()) == ["model.safetensors", "supernet_config.json"]
    back = StitchedSupernet.from_pretrained(tmp_path / "sn")
    assert back.configs == net.configs and back.buckets == net.buckets and back.seed == 7
    assert int(back.sample_step) == 11
    x = ids()
    with torch.no_grad():
        for c in net.configs:
            assert torch.equal(back(input_ids=x, stitch_config=c).logits, net(input_ids=x, stitch_config=c).logits)


def test_run_finetune_with_a_plan_trains_the_candidates_and_writes_each(pair, tmp_path):
    import json

    from hf_klas.selection.plan import AnchorDescriptor, StitchPlan
    from hf_klas.selection.scoring import Candidate
    from hf_klas.training.api import run_finetune

    f, b = pair
    f.save_pretrained(tmp_path / "front")
    b.save_pretrained(tmp_path / "back")
    cands = [Candidate(1, 2, 1.0, 0.1, bucket=0), Candidate(3, 4, 2.0, 0.2, bucket=1)]
    plan = StitchPlan(method="manual", front=AnchorDescriptor("front", num_blocks=4),
                      back=AnchorDescriptor("back", num_blocks=6), score=torch.zeros(4, 6),
                      flops=torch.ones(4, 6), valid_mask=None, anchor_flops=(1.0, 3.0), candidates=cands)
    plan.save(tmp_path / "plan")
    with open(tmp_path / "train.jsonl", "w") as fh:
        for row in _lm_data(8):
            fh.write(json.dumps({"input_ids": row["input_ids"]}) + "\n")
    summary = run_finetune(front=str(tmp_path / "front"), back=str(tmp_path / "back"), plan=str(tmp_path / "plan"),
                           dataset=str(tmp_path / "train.jsonl"),
                           calibration=str(tmp_path / "train.jsonl"), mode="full", sampling="flops", max_steps=4,
                           per_device_train_batch_size=4, save_steps=0, output_dir=str(tmp_path / "ft"),
                           use_cpu=True, progress=False)
    assert summary["configs"] == [[1, 2], [3, 4]]
    for (i, j), path in zip([(1, 2), (3, 4)], summary["models"]):
        model = StitchedModelForCausalLM.from_pretrained(path)
        assert (model.config.front_blocks, model.config.back_start) == (i, j)
        assert model.config.recipe["training"] == "supernet"
    sn = StitchedSupernet.from_pretrained(summary["supernet_dir"])
    assert sn.sampling == "flops" and sn.buckets == [0, 1] and int(sn.sample_step) == 4


def test_run_pareto_plan_candidates_and_finetuned_models(tmp_path):
    """KLAS step 5 end to end on tiny ViTs: plan candidates (LS init) + extracted supernet stitches + anchors."""
    import json

    from hf_klas.evaluation.api import run_pareto
    from hf_klas.flops import anchor_flops
    from hf_klas.selection.plan import AnchorDescriptor, StitchPlan
    from hf_klas.selection.scoring import Candidate

    small, big = vision_pair()
    small.save_pretrained(tmp_path / "small")
    big.save_pretrained(tmp_path / "big")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(20) % 5
    ds = datasets.Dataset.from_dict({"pixel_values": torch.randn(20, 1, 8, 8, generator=g).numpy(),
                                     "label": labels.tolist()})
    ds.save_to_disk(str(tmp_path / "data"))
    calib = datasets.Dataset.from_dict({"pixel_values": torch.randn(16, 1, 8, 8, generator=g).numpy()})
    calib.save_to_disk(str(tmp_path / "calib"))
    plan = StitchPlan(method="klas", front=AnchorDescriptor(str(tmp_path / "small"), num_blocks=3),
                      back=AnchorDescriptor(str(tmp_path / "big"), num_blocks=4), score=torch.zeros(3, 4),
                      flops=torch.ones(3, 4), valid_mask=None, anchor_flops=(1.0, 2.0),
                      candidates=[Candidate(1, 1, 1.0, 0.1), Candidate(2, 2, 1.5, 0.1)])
    plan.save(tmp_path / "plan")
    net = StitchedSupernet.from_anchors(str(tmp_path / "small"), str(tmp_path / "big"), plan=str(tmp_path / "plan"),
                                        progress=False)
    for i, j in net.configs:
        net.extract(i, j).save_pretrained(tmp_path / "ft" / f"stitch_i{i}_j{j}")
    summary = run_pareto(plan=str(tmp_path / "plan"), models_dir=str(tmp_path / "ft"), dataset=str(tmp_path / "data"),
                         split="train", calibration=str(tmp_path / "calib"), out_dir=str(tmp_path / "pareto"),
                         progress=False)
    assert summary["metric"] == "accuracy" and summary["higher_is_better"] is True
    assert set(summary["series"]) == {"klas (least-squares init)", "finetuned"}
    assert all(s["points"] == 2 and s["auc"] is not None for s in summary["series"].values())
    table = json.loads((tmp_path / "pareto" / "pareto.json").read_text())
    kinds = sorted(p["kind"] for p in table["points"])
    assert kinds == ["anchor", "anchor"] + ["stitch"] * 4
    anchor_costs = sorted(p["flops"] for p in table["points"] if p["kind"] == "anchor")
    assert anchor_costs == sorted([anchor_flops(small.config).total, anchor_flops(big.config).total])
    assert (tmp_path / "pareto" / "pareto.png").stat().st_size > 1000
    assert "auc_definition" in table
    assert all(p["scores"] == {"accuracy": p["metric"]} for p in table["points"])
    md = (tmp_path / "pareto" / "pareto.md").read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| model")]
    assert len(rows) == 6 and rows[0].startswith("| front: ") and "accuracy" in md[2]
    on_front = [ln for ln in rows if ln.rstrip(" |").endswith("yes")]
    assert len(on_front) == len(table["front"])


def test_run_pareto_self_stitch_has_one_anchor_and_an_auc(tmp_path):
    """Self-stitching named two ways (the plan's path, the user's spelling): one anchor point, a finite AUC, and
    a Markdown table with every point."""
    import json

    from hf_klas.evaluation.api import run_pareto
    from hf_klas.selection.plan import AnchorDescriptor, StitchPlan
    from hf_klas.selection.scoring import Candidate

    _, lm = llama_pair(vocab=64)
    lm.save_pretrained(tmp_path / "lm")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (12, 10), generator=g).tolist()
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(tmp_path / "data"))
    datasets.Dataset.from_dict({"input_ids": ids[:8]}).save_to_disk(str(tmp_path / "calib"))
    desc = AnchorDescriptor(str(tmp_path / "lm"), num_blocks=6)
    plan = StitchPlan(method="klas", front=desc, back=desc, score=torch.zeros(6, 6), flops=torch.ones(6, 6),
                      valid_mask=None, anchor_flops=(2.0, 2.0), seq_len=16,
                      candidates=[Candidate(1, 3, 1.0, 0.1), Candidate(3, 4, 1.5, 0.1)])
    plan.save(tmp_path / "plan")
    summary = run_pareto(plan=str(tmp_path / "plan"), front=str(tmp_path / "lm") + "/", dataset=str(tmp_path / "data"),
                         split="train", calibration=str(tmp_path / "calib"), metric="perplexity",
                         out_dir=str(tmp_path / "pareto"), progress=False)
    table = json.loads((tmp_path / "pareto" / "pareto.json").read_text())
    anchors = [p for p in table["points"] if p["kind"] == "anchor"]
    assert len(anchors) == 1 and anchors[0]["name"].startswith("anchor: ")
    assert summary["higher_is_better"] is False
    assert all(s["auc"] is not None for s in summary["series"].values())
    rows = [ln for ln in (tmp_path / "pareto" / "pareto.md").read_text().splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + 3  # the header, then one row per point (the separator starts with "|-")


def test_extracted_self_stitch_of_a_tied_anchor_is_tied_unless_trained_apart():
    front, _ = llama_pair()  # ties its head to its input embedding
    net = StitchedSupernet.from_anchors(front, None, [(1, 2), (2, 3)], progress=False)
    model = net.extract(2, 3)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.front.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == model.config.stitch_info["params"]
    with torch.no_grad():  # a full finetune moved the head away from the embedding: keep both
        net.core.lm_head.weight.add_(0.01)
    apart = net.extract(2, 3)
    assert not apart.config.tie_word_embeddings
    assert torch.equal(apart.lm_head.weight, net.core.lm_head.weight)

"""Finetuning stitched models: stitch / LoRA / full modes, anchor LR groups, distillation, data checks, CLI runner."""

from __future__ import annotations

import json
import sys

import datasets
import pytest
import torch
from tiny import llama_pair, vision_pair
from transformers import AutoModelForCausalLM, TrainingArguments

import hf_klas  # noqa: F401
from hf_klas import StitchedModel, StitchedModelForCausalLM, StitchedModelForImageClassification
from hf_klas.errors import DataError, HfKlasError
from hf_klas.training import (
    CausalLMCollator,
    ImageCollator,
    LoraTargetError,
    StitchDistillationTrainer,
    apply_lora,
    build_trainer,
    default_lora_config,
    default_target_modules,
    distillation_loss,
    merge_lora,
    prepare_causal_lm_dataset,
    prepare_image_dataset,
    prepare_model,
)


def targs(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=12, learning_rate=1e-2,
                logging_steps=100, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                lr_scheduler_type="constant", dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def lm_dataset(n=16, length=12):
    """Counting sequences (next token = current + 1): a fixed, learnable pattern."""
    rows = [[3 + (5 * k + t) % 120 for t in range(length)] for k in range(n)]
    return datasets.Dataset.from_dict({"input_ids": rows})


def image_dataset(n=24, num_labels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_labels
    pixels = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    pixels[:, 0, 0, :] += labels[:, None].float()  # the label is readable from the first row
    return datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "label": labels.tolist()})


@torch.no_grad()
def mean_loss(model, ds, collator):
    was = model.training
    model.eval()
    batch = collator([ds[k] for k in range(len(ds))])
    loss = float(model(**batch).loss)
    model.train(was)
    return loss


@pytest.fixture(scope="module")
def pair():
    return llama_pair()


def lm_stitch(pair, i=2, j=3):
    f, b = pair
    torch.manual_seed(0)
    calib = [torch.randint(3, 128, (24,)) for _ in range(4)]
    return StitchedModel.from_anchors(f, b, front_blocks=i, back_start=j, calibration=calib, progress=False)


def vit_stitch():
    small, big = vision_pair()
    calib = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))]
    return StitchedModel.from_anchors(small, big, front_blocks=2, back_start=1, calibration=calib, progress=False)


# ---- modes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stitch", "lora", "full"])
def test_lm_finetune_modes_reduce_loss(pair, tmp_path, mode):
    model = lm_stitch(pair)
    ds = prepare_causal_lm_dataset(lm_dataset(), vocab_size=128)
    collator = CausalLMCollator(0)
    before = mean_loss(model, ds, collator)
    lr = {"stitch": 1e-2, "lora": 1e-2, "full": 3e-3}[mode]
    trainer = build_trainer(model, targs(tmp_path, learning_rate=lr), ds, mode=mode, lora_r=4)
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    if mode == "stitch":
        assert trained == {"stitch.weight", "stitch.bias"}
    elif mode == "lora":
        assert trained and all("lora_" in n or ".stitch.modules_to_save." in n for n in trained)
        assert any(".stitch.modules_to_save." in n for n in trained)
        assert not any("lm_head" in n or "embed_tokens" in n for n in trained)
    else:
        assert len(trained) == len(list(model.parameters()))
    trainer.train()
    after = mean_loss(trainer.model, ds, collator)
    assert after < before - 0.05, (mode, before, after)


@pytest.mark.parametrize("mode", ["stitch", "lora", "full"])
def test_vit_finetune_modes_reduce_loss(tmp_path, mode):
    model = vit_stitch()
    ds = prepare_image_dataset(image_dataset(), num_labels=5)
    before = mean_loss(model, ds, ImageCollator())
    # full batches: tiny random anchors need a clean gradient for a frozen-anchor stitch to move the loss
    trainer = build_trainer(model, targs(tmp_path, learning_rate=2e-2 if mode != "full" else 1e-2, max_steps=12,
                                         per_device_train_batch_size=24), ds, mode=mode, lora_r=4)
    trainer.train()
    after = mean_loss(trainer.model, ds, ImageCollator())
    assert after < before - 0.05, (mode, before, after)


def test_full_mode_puts_anchors_at_a_tenth_of_the_learning_rate(pair, tmp_path):
    model = prepare_model(lm_stitch(pair), "full")
    trainer = build_trainer(model, targs(tmp_path, learning_rate=1e-3, weight_decay=0.01), lm_dataset(), mode="full",
                            prepare=False)
    opt = trainer.create_optimizer()
    ids = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for group in opt.param_groups:
        for p in group["params"]:
            by_lr[ids[id(p)]] = group["lr"]
    assert by_lr["stitch.weight"] == pytest.approx(1e-3) and by_lr["stitch.bias"] == pytest.approx(1e-3)
    anchors = {n: lr for n, lr in by_lr.items() if not n.startswith("stitch.")}
    assert anchors and all(lr == pytest.approx(1e-4) for lr in anchors.values())
    assert len(by_lr) == len(list(model.parameters()))
    # a custom scale, and the scheduler keeps the ratio (each group's own base LR)
    trainer2 = build_trainer(lm_stitch(pair), targs(tmp_path, learning_rate=1e-3, max_steps=2,
                                                    lr_scheduler_type="linear", warmup_steps=1),
                             lm_dataset(8), mode="full", anchor_lr_scale=0.5)
    trainer2.train()
    lrs = sorted({g["initial_lr"] for g in trainer2.optimizer.param_groups})
    assert lrs == [pytest.approx(5e-4), pytest.approx(1e-3)]


@pytest.mark.parametrize("kind", ["vit", "lm"])
def test_gradient_accumulation_matches_one_large_batch(pair, tmp_path, kind):
    """Image classifiers return a per-batch mean loss: StitchTrainer makes the Trainer scale it by 1/GA (transformers
    would otherwise treat the **kwargs forward as normalising by num_items_in_batch and skip the scaling)."""
    if kind == "vit":
        make, ds = vit_stitch, prepare_image_dataset(image_dataset(16), num_labels=5)
    else:
        make, ds = (lambda: lm_stitch(pair)), prepare_causal_lm_dataset(lm_dataset(16), vocab_size=128)
    finals = []
    for bs, ga in ((8, 1), (4, 2)):
        trainer = build_trainer(make(), targs(tmp_path / f"{bs}", max_steps=1, per_device_train_batch_size=bs,
                                              gradient_accumulation_steps=ga, optim="sgd", learning_rate=0.5),
                                ds, mode="stitch")
        trainer.train()
        finals.append(trainer.model.stitch.weight.detach().clone())
    assert not torch.equal(finals[0], make().stitch.weight)
    assert torch.allclose(finals[0], finals[1], atol=1e-5)


# ---- LoRA ---------------------------------------------------------------------------------------------------


def test_default_lora_targets_are_block_projections(pair):
    lm = lm_stitch(pair)
    assert default_target_modules(lm) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = default_lora_config(lm, r=4, alpha=16)
    assert cfg.r == 4 and cfg.lora_alpha == 16 and list(cfg.modules_to_save) == ["stitch"]
    vit = vit_stitch()
    block_linears = {n.rsplit(".", 1)[-1] for n, m in vit.front_blocks.named_modules()
                     if isinstance(m, torch.nn.Linear)}
    # the installed transformers' names (5.24: q_proj .. fc2; 5.0: query, key, value, dense): every block Linear
    assert set(default_target_modules(vit)) == block_linears and len(block_linears) >= 4
    peft_model = apply_lora(vit, r=2)
    wrapped = {n.split(".lora_")[0] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert wrapped and not any("stitch" in n or "classifier" in n for n in wrapped)
    assert all(".layers." in n or ".layer." in n for n in wrapped)


def test_lora_merges_back_to_an_equivalent_plain_stitched_model(pair, tmp_path):
    model = lm_stitch(pair)
    peft_model = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():  # as if trained: non-zero adapters and a changed stitch
        g = torch.Generator().manual_seed(0)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            if ".stitch.modules_to_save." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    x = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    peft_model.eval()
    with torch.no_grad():
        ref = peft_model(input_ids=x).logits
    merged = merge_lora(peft_model)
    assert type(merged) is StitchedModelForCausalLM
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=x).logits, ref, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(loaded) is StitchedModelForCausalLM
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, ref, atol=1e-5)


def test_lora_with_unknown_target_modules_lists_what_exists(pair):
    model = lm_stitch(pair)
    with pytest.raises(LoraTargetError) as err:
        default_lora_config(model, target_modules=["q_proj", "query_key_value"])
    assert isinstance(err.value, HfKlasError)
    assert "query_key_value" in err.value.cause and "q_proj" in err.value.fix and "down_proj" in err.value.fix
    from peft import LoraConfig

    with pytest.raises(LoraTargetError):
        apply_lora(model, LoraConfig(r=2, target_modules=["attn.c_attn"]))
    with pytest.raises(LoraTargetError):
        apply_lora(model, LoraConfig(r=2, target_modules=r"front\.nothing\.\d+"))


# ---- distillation -------------------------------------------------------------------------------------------


def test_distillation_loss_matches_definition():
    s, t = torch.randn(3, 7), torch.randn(3, 7)
    T = 2.0
    p = torch.softmax(t / T, -1)
    expected = (p * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(distillation_loss(s, t, T), expected, atol=1e-6)
    assert float(distillation_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([True, False, True])
    assert torch.allclose(distillation_loss(s, t, T, mask), distillation_loss(s[mask], t[mask], T), atol=1e-6)


def test_distillation_trainer_mixes_kl_and_labels_and_learns_the_teacher(pair, tmp_path):
    _, back = pair
    model = lm_stitch(pair)
    ds = prepare_causal_lm_dataset(lm_dataset(8), vocab_size=128)
    trainer = build_trainer(model, targs(tmp_path, max_steps=15), ds, mode="stitch", teacher=back,
                            distill_alpha=0.7, distill_temperature=2.0)
    assert isinstance(trainer, StitchDistillationTrainer)
    batch = CausalLMCollator(0)([ds[k] for k in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        out = model(**batch)
        t_logits = back(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = batch["labels"][:, 1:] != -100
        kd = distillation_loss(out.logits[:, :-1], t_logits[:, :-1], 2.0, mask)
    assert torch.allclose(loss, 0.7 * kd + 0.3 * out.loss, atol=1e-5)
    trainer.train()
    with torch.no_grad():
        kd_after = distillation_loss(model(**batch).logits[:, :-1], t_logits[:, :-1], 2.0, mask)
    assert kd_after < kd


def test_distillation_rejects_a_teacher_with_other_classes(tmp_path):
    model = vit_stitch()
    other, _ = vision_pair(num_labels=3)
    with pytest.raises(HfKlasError, match="classes"):
        build_trainer(model, targs(tmp_path), prepare_image_dataset(image_dataset(), 5), teacher=other)


# ---- data checks --------------------------------------------------------------------------------------------


def test_dataset_checks_name_cause_and_fix():
    with pytest.raises(DataError, match="no column 'text'") as err:
        prepare_causal_lm_dataset(datasets.Dataset.from_dict({"content": ["a b c"]}), tokenizer=object())
    assert "text_column" in err.value.fix
    with pytest.raises(DataError, match="no tokenizer"):
        prepare_causal_lm_dataset(datasets.Dataset.from_dict({"text": ["a b c"]}))
    with pytest.raises(DataError, match="vocabulary"):
        prepare_causal_lm_dataset(datasets.Dataset.from_dict({"input_ids": [[1, 2, 500]]}), vocab_size=128)
    with pytest.raises(DataError, match="prompt_column"):
        prepare_causal_lm_dataset(datasets.Dataset.from_dict({"prompt": ["a"]}), tokenizer=object(),
                                  prompt_column="prompt")
    with pytest.raises(DataError, match="empty"):
        prepare_causal_lm_dataset(datasets.Dataset.from_dict({"input_ids": []}))
    bad_labels = image_dataset().map(lambda r: {"label": r["label"] + 3})
    with pytest.raises(DataError, match=r"outside the model's 5 classes") as err:
        prepare_image_dataset(bad_labels, num_labels=5)
    assert "label2id" in err.value.fix
    with pytest.raises(DataError, match="no label column"):
        prepare_image_dataset(image_dataset().remove_columns("label"), num_labels=5)
    with pytest.raises(DataError, match="no image column"):
        prepare_image_dataset(image_dataset().rename_column("pixel_values", "x"), num_labels=5)


def test_bad_mode_is_refused(pair, tmp_path):
    with pytest.raises(HfKlasError, match="Unknown finetuning mode"):
        prepare_model(lm_stitch(pair), "everything")


# ---- options model / CLI ------------------------------------------------------------------------------------


def _jsonl(path, ds):
    with open(path, "w") as fh:
        for row in ds:
            fh.write(json.dumps(row) + "\n")
    return str(path)


def test_run_finetune_cli_lora_saves_a_merged_stitched_model(pair, tmp_path, capsys):
    from hf_klas.cli import main

    model = lm_stitch(pair)
    model.save_pretrained(tmp_path / "stitched")
    data = _jsonl(tmp_path / "train.jsonl", lm_dataset(8))
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(tmp_path / "stitched"), "--dataset", data, "--mode", "lora",
               "--lora_r", "2", "--max_steps", "3", "--per_device_train_batch_size", "4", "--save_steps", "0",
               "--output_dir", str(out), "--use_cpu", "--learning_rate", "1e-2", "--progress", "false"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["global_step"] == 3 and summary["mode"] == "lora"
    assert (out / "adapter" / "adapter_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded) is StitchedModelForCausalLM
    assert loaded.config.recipe["finetune"]["mode"] == "lora"
    assert loaded.config.front_blocks == 2 and loaded.config.back_start == 3


def test_run_finetune_validates_before_writing(pair, tmp_path):
    from hf_klas.training.api import run_finetune

    model = vit_stitch()
    model.save_pretrained(tmp_path / "vit")
    bad = image_dataset().map(lambda r: {"label": r["label"] + 10})
    bad.save_to_disk(str(tmp_path / "bad"))
    out = tmp_path / "never"
    with pytest.raises(DataError, match="outside"):
        run_finetune(model=str(tmp_path / "vit"), dataset=str(tmp_path / "bad"), output_dir=str(out), use_cpu=True)
    assert not out.exists()
    with pytest.raises(HfKlasError, match="mode"):
        run_finetune(model=str(tmp_path / "vit"), dataset=str(tmp_path / "bad"), mode="half", output_dir=str(out))
    with pytest.raises(HfKlasError, match="Nothing to finetune"):
        run_finetune(dataset=str(tmp_path / "bad"), output_dir=str(out))
    assert not out.exists()


def test_run_finetune_full_vit_from_a_saved_dataset(tmp_path):
    from hf_klas.training.api import run_finetune

    model = vit_stitch()
    model.save_pretrained(tmp_path / "vit")
    image_dataset().save_to_disk(str(tmp_path / "data"))
    summary = run_finetune(model=str(tmp_path / "vit"), dataset=str(tmp_path / "data"), mode="full", max_steps=2,
                           per_device_train_batch_size=8, save_steps=0, output_dir=str(tmp_path / "ft"),
                           use_cpu=True, progress=False)
    loaded = StitchedModelForImageClassification.from_pretrained(tmp_path / "ft")
    assert summary["global_step"] == 2 and loaded.config.recipe["finetune"]["anchor_lr_scale"] == 0.1


# ---- evaluate runner ----------------------------------------------------------------------------------------


def char_tokenizer():
    """One token per printable ASCII char (ids 32..126) + specials 0..3: fits the tiny anchors' 128-token vocab."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({chr(i): i for i in range(32, 127)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def test_run_evaluate_accuracy_perplexity_and_rouge(pair, tmp_path):
    from hf_klas.evaluation.api import run_evaluate
    from hf_klas.flops import stitch_flops

    vit = vit_stitch()
    vit.save_pretrained(tmp_path / "vit")
    image_dataset().save_to_disk(str(tmp_path / "images"))
    res = run_evaluate(model=str(tmp_path / "vit"), dataset=str(tmp_path / "images"), split="train", progress=False,
                       output_json=str(tmp_path / "vit.json"))
    assert res["metric"] == "accuracy" and 0.0 <= res["value"] <= 1.0 and res["stitched"]
    assert res["flops"] == stitch_flops(vit.config.front_config, vit.config.back_config, 2, 1).total
    assert json.loads((tmp_path / "vit.json").read_text())["value"] == res["value"]

    lm = lm_stitch(pair)
    lm.save_pretrained(tmp_path / "lm")
    data = _jsonl(tmp_path / "ids.jsonl", lm_dataset(6))
    res = run_evaluate(model=str(tmp_path / "lm"), dataset=data, progress=False)
    assert res["metric"] == "perplexity" and res["value"] > 1.0 and res["higher_is_better"] is False

    char_tokenizer().save_pretrained(tmp_path / "lm")  # a stitched model saved with its tokenizer
    rows = [{"prompt": f"describe {w}:", "target": f"{w} tool"} for w in ("apt", "bash", "curl")]
    with open(tmp_path / "pt.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    res = run_evaluate(model=str(tmp_path / "lm"), dataset=str(tmp_path / "pt.jsonl"), max_new_tokens=4,
                       progress=False)
    assert res["metric"] == "rouge1" and 0.0 <= res["value"] <= 1.0 and {"rouge2", "rougeL"} <= set(res)
    res = run_evaluate(model=str(tmp_path / "lm"), dataset=str(tmp_path / "pt.jsonl"), metric="perplexity",
                       progress=False)
    assert res["metric"] == "perplexity"  # prompt + target as the text
    with pytest.raises(HfKlasError, match="image classifiers"):
        run_evaluate(model=str(tmp_path / "lm"), dataset=data, metric="accuracy", progress=False)
    with pytest.raises(HfKlasError, match="Unknown metric"):
        run_evaluate(model=str(tmp_path / "lm"), dataset=data, metric="bleu", progress=False)


def test_a_new_metric_is_one_class(pair, tmp_path):
    """Defining a Metric subclass registers it: evaluate and pareto accept it, with its direction."""
    from hf_klas.evaluation import api
    from hf_klas.evaluation.metrics import METRICS, Metric
    from hf_klas.families import CAUSAL_LM

    class TokensSeen(Metric):
        name = "test_tokens_seen"
        task = CAUSAL_LM
        higher_is_better = False
        needs = ("logits",)
        description = "input tokens (a test metric)"

        @classmethod
        def compute(cls, model, preprocessor, ds, opts):
            return {"value": float(sum(len(r) for r in ds["input_ids"]))}

    try:
        lm = lm_stitch(pair)
        lm.save_pretrained(tmp_path / "lm")
        data = _jsonl(tmp_path / "ids.jsonl", lm_dataset(6))
        assert "test_tokens_seen" in api.metric_names()  # what the options accept is read from the registry
        res = api.run_evaluate(model=str(tmp_path / "lm"), dataset=data, metric="test_tokens_seen", progress=False)
        expected = sum(len(r) for r in lm_dataset(6)["input_ids"])
        assert res["value"] == expected and res["higher_is_better"] is False and res["metric"] == "test_tokens_seen"
        assert METRICS["perplexity"].task == CAUSAL_LM and METRICS["accuracy"].higher_is_better
    finally:
        del METRICS["test_tokens_seen"]


# ---- example scripts ----------------------------------------------------------------------------------------


def _example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


COMMON = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--max_steps", "2",
          "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3"]


def test_example_finetune_causal_lm(pair, tmp_path):
    model = lm_stitch(pair)
    model.save_pretrained(tmp_path / "lm")
    char_tokenizer().save_pretrained(tmp_path / "lm")
    rows = [{"prompt": f"describe {w}:", "target": f"{w} tool"} for w in ("apt", "bash", "curl", "dpkg")]
    with open(tmp_path / "pt.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    out = tmp_path / "out"
    final = _example("finetune_causal_lm").main([
        "--model_name_or_path", str(tmp_path / "lm"), "--train_file", str(tmp_path / "pt.jsonl"),
        "--validation_file", str(tmp_path / "pt.jsonl"), "--prompt_column", "prompt", "--target_column", "target",
        "--mode", "lora", "--lora_r", "2", "--output_dir", str(out), "--do_train", "--do_eval", *COMMON])
    assert type(final) is StitchedModelForCausalLM
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert "eval_loss" in json.loads((out / "eval_results.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.recipe["finetune"]["mode"] == "lora"


def test_example_finetune_image_classification_single_and_supernet(tmp_path):
    small, big = vision_pair()
    small.save_pretrained(tmp_path / "small")
    big.save_pretrained(tmp_path / "big")
    image_dataset().save_to_disk(str(tmp_path / "data"))
    example = _example("finetune_image_classification")
    out = tmp_path / "one"
    final = example.main(["--front", str(tmp_path / "small"), "--back", str(tmp_path / "big"), "--front_blocks", "2",
                          "--back_start", "1", "--dataset_name", str(tmp_path / "data"), "--output_dir", str(out),
                          "--do_train", "--do_eval", *COMMON])
    assert type(final) is StitchedModelForImageClassification
    assert 0.0 <= json.loads((out / "eval_results.json").read_text())["eval_accuracy"] <= 1.0
    assert StitchedModelForImageClassification.from_pretrained(out).config.recipe["finetune"]["mode"] == "full"

    from hf_klas.selection.plan import AnchorDescriptor, StitchPlan
    from hf_klas.selection.scoring import Candidate

    StitchPlan(method="klas", front=AnchorDescriptor("small", num_blocks=3), back=AnchorDescriptor("big", num_blocks=4),
               score=torch.zeros(3, 4), flops=torch.ones(3, 4), valid_mask=None, anchor_flops=(1.0, 2.0),
               candidates=[Candidate(1, 1, 1.0, 0.1, 0), Candidate(3, 2, 1.5, 0.1, 1)]).save(tmp_path / "plan")
    out = tmp_path / "sn"
    example.main(["--front", str(tmp_path / "small"), "--back", str(tmp_path / "big"), "--plan", str(tmp_path / "plan"),
                  "--sampling", "flops", "--dataset_name", str(tmp_path / "data"), "--output_dir", str(out),
                  "--do_train", "--do_eval", *COMMON])
    assert {p.name for p in out.iterdir()} >= {"stitch_i1_j1", "stitch_i3_j2", "supernet"}
    assert set(json.loads((out / "eval_results.json").read_text())) == {"stitch(1,1)", "stitch(3,2)"}

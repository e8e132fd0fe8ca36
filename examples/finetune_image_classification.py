#!/usr/bin/env python
"""Finetune a stitched image classifier (ViT/DeiT) with the Trainer (transformers-examples style).

One stitch (``--front_blocks/--back_start``, ``--budget_flops`` or a saved ``--model_name_or_path``), or -- with
``--plan`` -- an SN-Net supernet over all of a plan's candidates (each step trains one sampled configuration; every
candidate is written to ``<output_dir>/stitch_i<i>_j<j>`` afterwards). Modes: ``stitch``, ``lora``, ``full``
(anchors at ``--anchor_lr_scale`` x LR, SN-Net's 0.1 by default). Reports top-1 accuracy.

    # offline: the shipped Fashion-MNIST ViTs, full finetuning at 50% of the small->base FLOPs range
    python examples/finetune_image_classification.py --front vit-fmnist-tiny --back vit-fmnist-base \\
        --budget_flops 0.5 --mode full --dataset_name fashion_mnist --max_train_samples 5000 \\
        --output_dir vit-stitch --per_device_train_batch_size 64 --learning_rate 5e-4 --num_train_epochs 1 \\
        --do_train --do_eval --use_cpu

    # all KLAS candidates at once (supernet), FLOPs-grouped sampling (SN-Netv2)
    hf-klas select --front vit-fmnist-tiny --back vit-fmnist-base --out_dir plan
    python examples/finetune_image_classification.py --front vit-fmnist-tiny --back vit-fmnist-base --plan plan \\
        --sampling flops --mode full --dataset_name fashion_mnist --output_dir vit-supernet --do_train --max_steps 2000
    hf-klas pareto --plan plan --models_dir vit-supernet --dataset fashion_mnist --out_dir pareto
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from hf_klas import StitchedModel
from hf_klas.evaluation import top1_accuracy
from hf_klas.training import StitchedSupernet, build_trainer, prepare_image_dataset
from hf_klas.data import get_dataset
from hf_klas.loading import load_stitched_model, preprocessor_for
from hf_klas.training import save_finetuned

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which stitched model (or supernet) to train, and how."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A saved stitched model (directory or Hub id). Leave out to build one from --front/--back."})
    front: str | None = field(default=None, metadata={"help": "Front anchor: alias, Hub id or directory."})
    back: str | None = field(default=None, metadata={"help": "Back anchor (default: the front anchor itself)."})
    front_blocks: int | None = field(default=None, metadata={"help": "Stitch point: front blocks i."})
    back_start: int | None = field(default=None, metadata={"help": "Stitch point: first back block j."})
    budget_flops: float | None = field(default=None, metadata={
        "help": "Instead of i/j: FLOPs per image, or a fraction in (0, 1] of the back anchor's FLOPs."})
    selection_method: str = field(default="klas", metadata={"help": "Selector used with --budget_flops."})
    plan: str | None = field(default=None, metadata={
        "help": "A plan directory: train a supernet over all its candidates (SN-Net) instead of one stitch."})
    sampling: str = field(default="uniform", metadata={"help": "Supernet sampling: uniform or flops."})
    stitch_init: str = field(default="least_squares", metadata={"help": "least_squares or identity."})
    mode: str = field(default="full", metadata={"help": "stitch, lora or full (supernets: stitch or full)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)."})
    anchor_lr_scale: float = field(default=0.1, metadata={"help": "Anchor LR as a fraction of the LR."})
    distill: bool = field(default=False, metadata={"help": "Add KL distillation from the back anchor."})
    distill_alpha: float = field(default=0.5, metadata={"help": "Weight of the distillation term."})
    distill_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature."})


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    dataset_name: str = field(default="fashion_mnist", metadata={
        "help": "fashion_mnist (offline), a Hub dataset, or a save_to_disk directory."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    validation_split_name: str = field(default="test", metadata={"help": "Eval split."})
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (pixel_values/image)."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (labels/label)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})


def load_model(model_args: ModelArguments, calibration):
    if model_args.plan:
        net = StitchedSupernet.from_anchors(model_args.front, model_args.back, plan=model_args.plan,
                                            calibration=calibration if model_args.stitch_init == "least_squares"
                                            else None, sampling=model_args.sampling)
        return net, getattr(net.core, "_hf_klas_preprocessor", None)
    if model_args.model_name_or_path:
        model = load_stitched_model(model_args.model_name_or_path)
        return model, preprocessor_for(model, model_args.model_name_or_path)
    if not model_args.front:
        raise SystemExit("Pass --model_name_or_path, --front [--back] with a stitch point / --budget_flops, or --plan.")
    model = StitchedModel.for_image_classification(
        model_args.front, model_args.back, model_args.front_blocks, model_args.back_start,
        budget_flops=model_args.budget_flops, method=model_args.selection_method, calibration=calibration,
        stitch_init=model_args.stitch_init)
    return model, preprocessor_for(model)


def main(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # pushed below with our model card

    train_raw = (get_dataset(data_args.dataset_name, "train", data_args.dataset_config_name,
                                  limit=data_args.max_train_samples) if training_args.do_train else None)
    eval_raw = (get_dataset(data_args.dataset_name, data_args.validation_split_name,
                                 data_args.dataset_config_name, limit=data_args.max_eval_samples)
                if training_args.do_eval else None)
    calib_source = train_raw if train_raw is not None else eval_raw
    calibration = calib_source.select(range(min(256, len(calib_source)))) if calib_source is not None else None
    model, processor = load_model(model_args, calibration)
    cfg = model.core.config if isinstance(model, StitchedSupernet) else model.config

    def prepare(ds):
        return prepare_image_dataset(ds, cfg.num_labels, processor, image_column=data_args.image_column_name,
                                     label_column=data_args.label_column_name)

    train_ds = prepare(train_raw) if train_raw is not None else None
    eval_ds = prepare(eval_raw) if eval_raw is not None else None
    teacher = None
    if model_args.distill:
        from hf_klas.loading import resolve_anchor

        teacher = resolve_anchor(model_args.back or cfg.anchors["back"]["name_or_path"]).load_full()
    trainer = build_trainer(model, training_args, train_ds, eval_ds, mode=model_args.mode, lora_r=model_args.lora_r,
                            lora_alpha=model_args.lora_alpha, anchor_lr_scale=model_args.anchor_lr_scale,
                            teacher=teacher, distill_alpha=model_args.distill_alpha,
                            distill_temperature=model_args.distill_temperature)
    final = None
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    recipe = {"mode": model_args.mode, "learning_rate": training_args.learning_rate,
              "anchor_lr_scale": model_args.anchor_lr_scale, "dataset": data_args.dataset_name}
    if isinstance(model, StitchedSupernet):
        accuracies = {}
        for i, j in model.configs:
            sub = model.extract(i, j)
            sub.config.recipe["finetune"] = recipe
            if training_args.should_save and training_args.do_train:
                sub.save_pretrained(os.path.join(training_args.output_dir, f"stitch_i{i}_j{j}"))
            if eval_ds is not None:
                accuracies[f"stitch({i},{j})"] = top1_accuracy(sub, eval_ds, label_key="labels",
                                                               batch_size=training_args.per_device_eval_batch_size)
        if training_args.should_save and training_args.do_train:
            model.save_pretrained(os.path.join(training_args.output_dir, "supernet"))
        if accuracies:
            trainer.log_metrics("eval", accuracies)
            trainer.save_metrics("eval", accuracies)
        return model
    if training_args.do_eval:
        acc = top1_accuracy(trainer.model, eval_ds, label_key="labels",
                            batch_size=training_args.per_device_eval_batch_size)
        trainer.log_metrics("eval", {"eval_accuracy": acc, "eval_samples": len(eval_ds)})
        trainer.save_metrics("eval", {"eval_accuracy": acc, "eval_samples": len(eval_ds)})
    if training_args.do_train:
        saved = save_finetuned(trainer.model, training_args.output_dir, recipe=recipe, preprocessor=processor,
                               is_main_process=training_args.should_save)
        final = saved["model"]
    if push_to_hub and final is not None and training_args.should_save:
        repo = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
        final.push_to_hub(repo, token=training_args.hub_token, private=training_args.hub_private_repo)
    return final


if __name__ == "__main__":
    main()

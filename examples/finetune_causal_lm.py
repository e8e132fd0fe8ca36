#!/usr/bin/env python
"""Finetune a stitched causal LM with the Trainer (transformers-examples style).

Build a stitch from two anchors -- at an explicit point or for a FLOPs budget (KLAS picks the point) -- or load a
saved one, then finetune it in one of three modes: ``stitch`` (only the stitch layer), ``lora`` (stitch + LoRA on
the blocks' attention/MLP projections, merged back at the end) or ``full`` (everything; anchor weights at
``--anchor_lr_scale`` x the learning rate), optionally distilling from the back anchor.

    # offline: SmolLM2-135M stitched to itself at 60% of its FLOPs, LoRA on Debian package descriptions
    python examples/finetune_causal_lm.py --front smollm2-135m --budget_flops 0.6 --mode lora \\
        --dataset_name debian_descriptions --max_train_samples 2000 --output_dir smollm2-stitch-60 \\
        --per_device_train_batch_size 4 --learning_rate 2e-4 --max_steps 500 --do_train --do_eval

    # Llama-3.2-1B -> 3B (Hub), several GPUs, pushed to the Hub with its model card
    accelerate launch examples/finetune_causal_lm.py --front llama-1b --back llama-3b --budget_flops 0.5 \\
        --mode lora --dataset_name <hub dataset> --text_column text --output_dir llama-1b-3b-stitch \\
        --do_train --push_to_hub --hub_model_id <you>/llama-1b-3b-stitch

    # 2 CPU processes (gloo): --config_file examples/accelerate_config_cpu2.yaml ... --use_cpu

Resume a killed run with ``--resume_from_checkpoint last`` (a checkpoint of another stitch is refused).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field

import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from hf_klas import StitchedModel
from hf_klas.training import build_trainer, prepare_causal_lm_dataset
from hf_klas.data import get_dataset
from hf_klas.loading import load_stitched_model, preprocessor_for
from hf_klas.training import save_finetuned

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which stitched model to train, and how."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A saved stitched model (directory or Hub id). Leave out to build one from --front/--back."})
    front: str | None = field(default=None, metadata={"help": "Front anchor: alias, Hub id, directory or .gguf."})
    back: str | None = field(default=None, metadata={"help": "Back anchor (default: the front anchor itself)."})
    front_blocks: int | None = field(default=None, metadata={"help": "Stitch point: front blocks i."})
    back_start: int | None = field(default=None, metadata={"help": "Stitch point: first back block j."})
    budget_flops: float | None = field(default=None, metadata={
        "help": "Instead of i/j: FLOPs per sequence, or a fraction in (0, 1] of the back anchor's FLOPs."})
    selection_method: str = field(default="klas", metadata={"help": "Selector used with --budget_flops."})
    stitch_init: str = field(default="least_squares", metadata={"help": "least_squares or identity."})
    mode: str = field(default="lora", metadata={"help": "stitch, lora or full."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(default=None, metadata={
        "help": "Comma-separated LoRA targets (default: the family's attention + MLP projections)."})
    merge_lora: bool = field(default=True, metadata={"help": "Save the merged model (adapter kept in ./adapter)."})
    anchor_lr_scale: float = field(default=0.1, metadata={"help": "Anchor LR as a fraction of the LR (full mode)."})
    distill: bool = field(default=False, metadata={"help": "Add KL distillation from the back anchor."})
    teacher: str | None = field(default=None, metadata={"help": "Distillation teacher (default: the back anchor)."})
    distill_alpha: float = field(default=0.5, metadata={"help": "Weight of the distillation term."})
    distill_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature."})


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    dataset_name: str = field(default="debian_descriptions", metadata={
        "help": "debian_descriptions (offline), a Hub dataset, or a save_to_disk directory."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: str | None = field(default=None, metadata={"help": "A .json/.jsonl/.csv/.txt training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A validation file (same formats)."})
    validation_split_name: str = field(default="test", metadata={"help": "Eval split of dataset_name."})
    text_column: str = field(default="text", metadata={"help": "Text column."})
    prompt_column: str | None = field(default=None, metadata={
        "help": "Prompt column (with --target_column; prompt tokens get no loss). debian_descriptions: prompt."})
    target_column: str | None = field(default=None, metadata={"help": "Target column. debian_descriptions: target."})
    max_seq_length: int = field(default=256, metadata={"help": "Max tokens per example."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})


def load_model(model_args: ModelArguments):
    if model_args.model_name_or_path:
        model = load_stitched_model(model_args.model_name_or_path)
        return model, preprocessor_for(model, model_args.model_name_or_path)
    if not model_args.front:
        raise SystemExit("Pass --model_name_or_path, or --front (and --back) with a stitch point or --budget_flops.")
    model = StitchedModel.for_causal_lm(model_args.front, model_args.back, model_args.front_blocks,
                                        model_args.back_start, budget_flops=model_args.budget_flops,
                                        method=model_args.selection_method, stitch_init=model_args.stitch_init)
    return model, preprocessor_for(model)


def load_split(data_args: DataTrainingArguments, split: str, file: str | None, limit: int | None):
    return get_dataset(file or data_args.dataset_name, split, data_args.dataset_config_name, limit=limit)


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
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)
    # The final (merged) model is pushed by the stitched model itself, which keeps hf_klas's model card; the
    # Trainer would overwrite it (and push every checkpoint).
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False

    model, tokenizer = load_model(model_args)
    prompt, target = data_args.prompt_column, data_args.target_column
    if data_args.dataset_name == "debian_descriptions" and not data_args.train_file and prompt is None:
        prompt, target = "prompt", "target"

    def prepare(ds):
        return prepare_causal_lm_dataset(ds, tokenizer, text_column=data_args.text_column, prompt_column=prompt,
                                         target_column=target, max_length=data_args.max_seq_length,
                                         vocab_size=model.config.vocab_size)

    train_ds = eval_ds = None
    if training_args.do_train:
        train_ds = prepare(load_split(data_args, "train", data_args.train_file, data_args.max_train_samples))
    if training_args.do_eval:
        eval_ds = prepare(load_split(data_args, data_args.validation_split_name, data_args.validation_file,
                                     data_args.max_eval_samples))
    teacher = None
    if model_args.distill:
        from hf_klas.loading import resolve_anchor

        teacher = resolve_anchor(model_args.teacher or model_args.back or model_args.front
                                 or model.config.anchors["back"]["name_or_path"]).load_full()
    targets = model_args.lora_target_modules.split(",") if model_args.lora_target_modules else None
    trainer = build_trainer(model, training_args, train_ds, eval_ds, mode=model_args.mode, lora_r=model_args.lora_r,
                            lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                            lora_target_modules=targets, anchor_lr_scale=model_args.anchor_lr_scale, teacher=teacher,
                            distill_alpha=model_args.distill_alpha,
                            distill_temperature=model_args.distill_temperature, processing_class=tokenizer)

    final = trainer.model
    recipe = None
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_ds)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        recipe = {"mode": model_args.mode, "learning_rate": training_args.learning_rate,
                  "anchor_lr_scale": model_args.anchor_lr_scale, "steps": int(train_result.global_step),
                  "dataset": data_args.train_file or data_args.dataset_name}
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_ds)
        metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_train:  # after evaluation: merging LoRA rewrites the trained modules
        saved = save_finetuned(trainer.model, training_args.output_dir, recipe=recipe, merge=model_args.merge_lora,
                               preprocessor=tokenizer, is_main_process=training_args.should_save)
        final = saved["model"]
    if push_to_hub and training_args.should_save:
        repo = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
        final.push_to_hub(repo, token=training_args.hub_token, private=training_args.hub_private_repo)
    return final


if __name__ == "__main__":
    main()

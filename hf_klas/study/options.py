"""Options of the selection-quality study (``hf-klas quality`` / :func:`hf_klas.study.run_quality`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import HfKlasError
from ..selection.selectors import SELECTORS
from ..training.recipes import VIT_RECIPE

#: Selector specs: ``method[:probe][@option=value,...]`` (e.g. ``klas:probenet``, ``klas@eps_rel=0.1``).
VIT_SELECTORS = ["klas", "klas:probenet", "klas:tuned_lens", "theta", "theta:probenet", "ce", "ce:probenet",
                 "klas@eps_rel=0.1", "klas@eps_rel=1.0", "snnet", "cka", "mse", "random"]
LM_SELECTORS = ["klas", "klas:tuned_lens", "theta", "ce", "klas@last_denominator=median", "klas@eps_rel=0.1",
                "snnet", "cka", "mse", "block_influence", "ls_replacement", "random"]
PROTOCOLS = ("demo", "full", "lora", "stitch")


@dataclass
class QualityOptions:
    """Options of ``hf-klas quality`` / :func:`~hf_klas.study.run_quality` (selection-quality study)."""

    out_dir: str = field(default="benchmarks/results", metadata={"help": "Where the JSON/Markdown/PNG go."})
    name: str = field(default="selection_quality", metadata={"help": "File stem of the outputs."})
    studies: list[str] = field(default_factory=lambda: ["vit", "lm"], metadata={
        "help": "Which studies run: vit (every pair of vit_pairs), lm (self-stitching of lm_anchor)."})
    quick: bool = field(default=False, metadata={
        "help": "Smoke-test sizes (one ViT pair, a handful of configurations, a few steps/texts): minutes -> "
                "seconds; the results are meaningless."})
    # ---- ViT pairs ------------------------------------------------------------------------------------------
    vit_pairs: list[str] = field(default_factory=lambda: ["vit-fmnist-tiny:vit-fmnist-small",
                                                          "vit-fmnist-small:vit-fmnist-base",
                                                          "vit-fmnist-tiny:vit-fmnist-base"], metadata={
        "help": "ViT anchor pairs 'front:back' (aliases or directories); every valid configuration between the two "
                "anchors' FLOPs is in the pool. tiny:base is the demo's pair."})
    vit_protocols: list[str] = field(default_factory=lambda: ["demo", "full"], metadata={
        "help": "Oracle finetuning protocols, each its own study with the same pool and selector scores: demo (the "
                "primary oracle: hf_klas.training.recipes.VIT_RECIPE, the recipe hf-klas demo finetunes every "
                "anchor and stitch with -- every weight at the peak lr, cosine, vit_demo_steps), full (v2's: every "
                "weight, anchors at vit_anchor_lr_scale x LR, linear decay, vit_steps), lora (LoRA on the blocks + "
                "the stitch), stitch (the stitch layer alone). Under demo and full the anchors get the same "
                "finetune per seed."})
    vit_seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={
        "help": "Finetune seeds (the seed sets the data order) of every configuration and protocol."})
    vit_demo_steps: int = field(default=VIT_RECIPE.steps, metadata={
        "help": "Steps of the demo protocol (the demo's; batch, lr, schedule are VIT_RECIPE's)."})
    vit_steps: int = field(default=150, metadata={
        "help": "Finetuning steps per configuration and seed of the full, lora and stitch protocols."})
    vit_batch_size: int = field(default=64, metadata={"help": "Batch size of the full, lora and stitch protocols."})
    vit_lr: float = field(default=1e-3, metadata={
        "help": "Learning rate of the stitch (and LoRA adapters) in the full, lora and stitch protocols; anchors "
                "get vit_anchor_lr_scale x this in full."})
    vit_anchor_lr_scale: float = field(default=0.1, metadata={"help": "Anchor LR scale of the full protocol."})
    vit_train_samples: int = field(default=VIT_RECIPE.steps * VIT_RECIPE.batch_size, metadata={
        "help": "Fixed finetuning subset: the first N images of the Fashion-MNIST train split (rows 0..54,999 of "
                "the training file); default = the demo's steps x batch (each image once)."})
    vit_eval_samples: int = field(default=5000, metadata={
        "help": "Oracle evaluation: the first N images of the validation split (rows 55,000..59,999 of the "
                "training file; 5000 = all of it). The test split is never read by the study: it picks "
                "defaults."})
    vit_calibration_samples: int = field(default=256, metadata={
        "help": "Calibration images of the least-squares stitch init and the selectors (with labels for "
                "ProbeNet): the first N images of the train split, as the library's default calibration and the "
                "demo."})
    vit_selectors: list[str] = field(default_factory=lambda: list(VIT_SELECTORS), metadata={
        "help": "Selectors for ViT pairs: method[:probe][@option=value,...]."})
    # ---- LLM self-stitching ---------------------------------------------------------------------------------
    lm_anchor: str = field(default="smollm2-135m", metadata={"help": "Causal LM stitched to itself."})
    lm_min_skip: int = field(default=1, metadata={"help": "Pool: configurations skipping at least this many blocks."})
    lm_max_skip: int = field(default=6, metadata={"help": "Pool: ... and at most this many (j - i)."})
    lm_max_configs: int = field(default=0, metadata={
        "help": "Training-free pool: at most this many configurations (seeded random subset); 0 = all."})
    lm_eval_texts: int = field(default=16, metadata={
        "help": "Debian descriptions (v2 validation split, seeded shuffle) for perplexity."})
    lm_calibration_texts: int = field(default=32, metadata={
        "help": "Debian descriptions (train split) for the least-squares stitch fit; the selectors use the first "
                "lm_selector_texts of them."})
    lm_selector_texts: int = field(default=16, metadata={"help": "Calibration texts of the selectors."})
    lm_max_length: int = field(default=160, metadata={"help": "Tokens per text (truncation)."})
    lm_description_chars: int = field(default=250, metadata={
        "help": "Debian descriptions are cut to this many characters (every LM text of the study), so prompt + "
                "synopsis fit lm_max_length and the LoRA oracle trains on the synopsis."})
    lm_rouge_texts: int = field(default=16, metadata={
        "help": "Debian v2 validation packages whose synopsis every configuration generates (ROUGE-L); 0 = "
                "perplexity only."})
    lm_max_new_tokens: int = field(default=16, metadata={"help": "Greedy new tokens per generated synopsis."})
    lm_lora_buckets: int = field(default=3, metadata={
        "help": "LoRA oracle: every configuration of the LoRA grid in this many FLOPs buckets (the cheapest, a "
                "middle and the dearest; for self-stitching a bucket is one number of skipped blocks) is "
                "LoRA-finetuned per seed; 0 = training-free oracle only."})
    lm_lora_stride: int = field(default=3, metadata={
        "help": "LoRA grid: stitches resuming at every k-th block counted back from the last (back_start = n-1, "
                "n-1-k, ...), so the configurations resuming at the last block -- where Γ's LLM picks go -- are in "
                "the pool; every configuration of a bucket would be ~25 LoRA runs per seed, more than a CPU hour "
                "holds."})
    lm_lora_seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "LoRA oracle seeds."})
    lm_lora_steps: int = field(default=12, metadata={"help": "LoRA steps per configuration and seed."})
    lm_lora_batch_size: int = field(default=4, metadata={"help": "LoRA batch size."})
    lm_lora_lr: float = field(default=2e-4, metadata={"help": "LoRA learning rate (stitch layer too)."})
    lm_lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lm_train_texts: int = field(default=96, metadata={
        "help": "Debian training packages (prompt + synopsis) the LoRA oracle finetunes on."})
    lm_selectors: list[str] = field(default_factory=lambda: list(LM_SELECTORS), metadata={
        "help": "Selectors for self-stitching: method[:probe][@option=value,...]."})
    lm_parts: list[str] = field(default_factory=lambda: ["all"], metadata={
        "help": "Which parts of the LM study this call computes: all (every part, then the report), or some of "
                "free (training-free oracle), selectors, lora@SEED (the LoRA oracle of one seed) -- stored in "
                "parts_dir, no report; a later call with all assembles them. How --jobs 2 shares the work."})
    # ---- shared ---------------------------------------------------------------------------------------------
    tuned_lens_steps: int = field(default=20, metadata={"help": "Training steps of the tuned-lens probes."})
    num_buckets: int = field(default=10, metadata={"help": "Equal-width FLOPs buckets of the pool."})
    tau: float = field(default=0.05, metadata={"help": "KLAS's tau for the recovery metric's candidate sets."})
    random_repeats: int = field(default=20, metadata={"help": "Seeds of the random selector (mean and std)."})
    subset_seed: int = field(default=0, metadata={"help": "Seed of shuffles and of tie-breaking."})
    ridge: float = field(default=1e-4, metadata={"help": "Relative ridge of the least-squares stitch init."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads per study process (0: leave as is)."})
    jobs: int = field(default=2, metadata={
        "help": "2: two processes share the work (one runs vit then the LoRA oracle of every other seed, the other "
                "the LM training-free oracle, the selectors and the remaining seeds; with lm alone, the seeds are "
                "split the same way), combined into one report as --from_json would; 1: everything one after "
                "another in this process. Each piece is seeded and runs alone in its process, so the numbers do "
                "not depend on it."})
    resume: bool = field(default=True, metadata={
        "help": "Reuse the LM study's parts that an earlier call with the same options stored in parts_dir (an "
                "interrupted run continues where it stopped; each configuration is stored once measured); false: "
                "delete them and start over. Deleted anyway once the report is written."})
    parts_dir: str = field(default="", metadata={
        "help": "Where the LM study's parts are stored while it runs ('' = <out_dir>/<name>.parts), one directory "
                "per hash of the options and versions that decide them."})
    use_cache: bool = field(default=False, metadata={
        "help": "Reuse cached selection plans (timings then measure the cache, not the selector)."})
    progress: bool = field(default=True, metadata={"help": "Show one progress bar per stage."})
    verbose: bool = field(default=False, metadata={
        "help": "Print everything the libraries say (by default it goes to <out_dir>/<name>.log)."})
    from_json: list[str] = field(default_factory=list, metadata={
        "help": "Re-analyse previous runs: every metric, table and plot recomputed from their JSON (oracle "
                "qualities and selector scores) without running any model. Several files (e.g. a run of "
                "--studies vit and one of --studies lm, possibly on two machines) are combined into one report; "
                "they must come from the same hf_klas version and hold different studies. tau, random_repeats, "
                "out_dir and name come from this call, everything else from the original runs."})

    def __post_init__(self):
        """Checked once, where the values enter."""
        if isinstance(self.from_json, (str, Path)):  # one path given from Python
            self.from_json = [str(self.from_json)]
        bad = sorted(set(self.studies) - {"vit", "lm"})
        if bad or not self.studies:
            raise HfKlasError(f"Unknown studies {bad or self.studies}.", "Use --studies vit lm (or one of them).")
        if not set(self.vit_protocols) <= set(PROTOCOLS) or not self.vit_protocols:
            raise HfKlasError(f"Unknown vit_protocols {self.vit_protocols}.", f"Use some of {PROTOCOLS}.")
        for pair in self.vit_pairs:
            if ":" not in pair:
                raise HfKlasError(f"ViT pair {pair!r} is not 'front:back'.",
                                  "Pass e.g. vit-fmnist-tiny:vit-fmnist-small.")
        if not self.vit_seeds or not self.lm_lora_seeds:
            raise HfKlasError("vit_seeds / lm_lora_seeds is empty.", "Pass at least one seed.")
        bad_parts = [p for p in self.lm_parts if p not in ("all", "free", "selectors")
                     and not (p.startswith("lora@") and p[5:].lstrip("-").isdigit())]
        if bad_parts or not self.lm_parts or ("all" in self.lm_parts and len(self.lm_parts) > 1):
            raise HfKlasError(f"lm_parts={self.lm_parts}.",
                              "Use all, or some of free, selectors, lora@SEED (e.g. --lm_parts free lora@0).")
        if self.lm_parts != ["all"] and (self.studies != ["lm"] or self.from_json):
            raise HfKlasError(f"lm_parts={self.lm_parts} with studies={self.studies}.",
                              "Compute LM parts in a call of --studies lm alone (no --from_json).")
        unknown_seeds = [p for p in self.lm_parts if p.startswith("lora@") and int(p[5:]) not in self.lm_lora_seeds]
        if unknown_seeds:
            raise HfKlasError(f"lm_parts {unknown_seeds} name seeds not in lm_lora_seeds={self.lm_lora_seeds}.",
                              "Name seeds of --lm_lora_seeds.")
        if self.jobs < 1:
            raise HfKlasError(f"jobs={self.jobs}.", "Use jobs >= 1 (1: the studies run one after another).")
        if self.num_buckets < 1 or self.random_repeats < 1 or self.tau < 0:
            raise HfKlasError(f"num_buckets={self.num_buckets}, random_repeats={self.random_repeats}, "
                              f"tau={self.tau}.", "Use num_buckets >= 1, random_repeats >= 1, tau >= 0.")
        if not 1 <= self.lm_min_skip <= self.lm_max_skip:
            raise HfKlasError(f"lm_min_skip={self.lm_min_skip}, lm_max_skip={self.lm_max_skip}.",
                              "Use 1 <= lm_min_skip <= lm_max_skip.")
        for spec in self.vit_selectors + self.lm_selectors:
            parse_selector(spec)


def parse_selector(spec: str) -> tuple[str, str, dict]:
    """``"klas:probenet@eps_rel=0.1"`` -> (label, method, options); numbers and booleans are converted."""
    head, _, tail = spec.partition("@")
    method, _, probe = head.partition(":")
    if method not in SELECTORS:
        raise HfKlasError(f"Unknown selector {spec!r} in the quality study.",
                          f"Use one of {', '.join(SELECTORS)} (method[:probe][@option=value,...]).")
    options: dict = {"probe": probe} if probe else {}
    for item in filter(None, tail.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise HfKlasError(f"Selector option {item!r} in {spec!r} is not key=value.", "Write e.g. klas@eps_rel=0.1.")
        options[key] = _value(value)
    probe_methods = {"klas", "theta", "ce"}
    label = head if probe or method not in probe_methods else f"{method}:logit_lens"
    if tail:
        label += "@" + tail
    return label, method, options


def _value(text: str):
    if text in ("true", "false"):
        return text == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def quick(opts: QualityOptions) -> QualityOptions:
    """Smoke-test sizes: every code path, seconds instead of an hour."""
    return replace(
        opts, vit_pairs=opts.vit_pairs[:1], vit_seeds=opts.vit_seeds[:2], vit_steps=2, vit_demo_steps=2,
        vit_batch_size=16, vit_train_samples=64, vit_eval_samples=64, vit_calibration_samples=32,
        lm_eval_texts=2, lm_calibration_texts=4, lm_rouge_texts=min(opts.lm_rouge_texts, 2), lm_max_new_tokens=4,
        lm_selector_texts=2, lm_max_length=64, lm_description_chars=80, lm_max_configs=5,
        lm_lora_buckets=min(opts.lm_lora_buckets, 1),
        lm_lora_stride=1, lm_lora_seeds=opts.lm_lora_seeds[:2], lm_lora_steps=1, lm_train_texts=4,
        tuned_lens_steps=2, random_repeats=3, num_buckets=3)

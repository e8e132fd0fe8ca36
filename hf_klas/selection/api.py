"""Stitch selection as a library call and as ``hf-klas select``: options, plan cache, budget picks, anchors.

* :class:`SelectOptions` / :func:`run_select` -- the ``select`` command (one dataclass for API and CLI): score
  every configuration of two anchors (or one, self-stitching), write ``<out_dir>/plan.json`` + ``heatmap.png``
  + ``candidates.png``, and, with ``budget``, report the configuration to build.
* :func:`select_for_budget` -- what ``StitchedModel.from_anchors(..., budget_flops=...)`` calls.
* :func:`select_anchors` -- k >= 2 anchors: rank pairs by the KL between their final outputs (KLAS step 2).

Plan cache: a plan depends on both anchors (weights), the method and its options, the calibration batches and
the FLOPs token count. Its key hashes exactly those (:func:`plan_cache_key`), and plans live in
``hf_klas.storage.cache_dir()/plans/<key>/plan.json``; a second call with another budget reads the plan and
runs no anchor forward pass. ``plan=`` (a :class:`StitchPlan` or a plan directory) skips the cache entirely.

FLOPs are counted for one sequence of ``seq_len = 128`` tokens for LLMs (``DEFAULT_SEQ_LEN``: the calibration
length and the number ``hf_klas.building.stitch_info`` records in stitched configs) or one image at the anchors'
``image_size``. Budgets are FLOPs, or a fraction in (0, 1] of the back anchor's FLOPs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from ..activations import run_prefix
from ..anatomy import check_compatible
from ..calibration import calibration_batches, calibration_from_path
from ..errors import BudgetError, CalibrationError, HfKlasError, StitchPointError
from ..families import CAUSAL_LM, task_of
from ..flops import DEFAULT_SEQ_LEN, anchor_flops
from ..loading import Anchor, resolve_anchor
from ..probes import LogitLens
from ..storage import cache_dir
from ..version import __version__
from .distributed import all_true, is_main_process, num_processes, wait_for_everyone
from .divergence import FinalOutputKLAccumulator
from .plan import PLAN_FILE, PlanExistsError, StitchPlan
from .selectors import DEFAULT_METHOD, SELECTORS, Selector, SelectorConfig, default_method, get_selector, selector_class
from .selectors.base import grids, load_model, same_anchor, valid_mask

POLICIES = ("top_bucket", "lowest")


@dataclass
class SelectOptions:
    """Options of ``hf-klas select`` / :func:`run_select`: which anchors, which method, which data, what to write.

    The method's own options (buckets, tau, probe, ...) are its :class:`SelectorConfig` -- on the command line
    they are flags of their own (``hf-klas select --method klas --help`` lists KLAS's); in Python pass
    ``run_select(opts, KlasConfig(...))`` or keywords.
    """

    front: str | None = field(default=None, metadata={
        "help": "Front (cheaper) anchor: alias (smollm2-135m, vit-fmnist-tiny, llama-1b), Hub id, directory or "
                ".gguf file."})
    back: str | None = field(default=None, metadata={
        "help": "Back (dearer) anchor; leave out to stitch the front anchor to itself (depth pruning)."})
    anchors: list[str] = field(default_factory=list, metadata={
        "help": "k >= 2 anchors instead of front/back: the pair with the lowest final-output KL is stitched "
                "(cheaper -> dearer)."})
    budget: float | None = field(default=None, metadata={
        "help": "FLOPs budget (number) or fraction in (0, 1] of the back anchor's FLOPs; reports the "
                "configuration to build."})
    method: str | None = field(default=None, metadata={
        "help": f"Selector: {', '.join(SELECTORS)}. Default: chosen per task by the selection-quality study "
                "(hf_klas.selection.selectors.TASK_DEFAULTS: theta for a causal LM stitched to itself, snnet "
                f"for two vision anchors, {DEFAULT_METHOD} otherwise; README says how thin that evidence is). "
                "klas is always the paper's Γ exactly. Without --method the command line takes KLAS's flags; "
                "the ones the default selector shares carry over, others fail by name."})
    calibration: str | None = field(default=None, metadata={
        "help": "Calibration data: a .txt file (one sample per non-empty line), a .json/.jsonl file with a "
                "'text' column, or a directory written by datasets' save_to_disk. Default: the offline "
                "default of hf_klas.calibration."})
    calibration_samples: int = field(default=64, metadata={"help": "Number of calibration samples used."})
    calibration_length: int = field(default=DEFAULT_SEQ_LEN, metadata={"help": "Max tokens per calibration text."})
    batch_size: int = field(default=8, metadata={"help": "Calibration batch size."})
    seq_len: int = field(default=DEFAULT_SEQ_LEN, metadata={
        "help": "Tokens per sequence at which LLM FLOPs are counted (budgets use the same count)."})
    policy: str = field(default="top_bucket", metadata={
        "help": "Budget pick: top_bucket (best score in the dearest FLOPs bucket that fits) or lowest "
                "(lowest score among all that fit)."})
    out_dir: str = field(default="stitch_plan", metadata={"help": "Where plan.json and the PNGs are written."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing plan in out_dir."})
    use_cache: bool = field(default=True, metadata={
        "help": "Reuse / store plans in the cache (hf_klas.storage.cache_dir()/plans)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})
    device_map: str | None = field(default=None, metadata={
        "help": "Where anchors loaded from disk are placed (transformers' device_map): 'auto', a device ('cpu', "
                "'cuda:0'), or a JSON object module -> device ('disk' offloads to offload_folder). Default: the CPU, "
                "or each process's own device under accelerate launch."})
    offload_folder: str | None = field(default=None, metadata={
        "help": "Folder for the weights device_map offloads to disk."})

    def __post_init__(self):
        """Checked here, once, where the values enter (API and CLI alike)."""
        self.device_map = parse_device_map(self.device_map)
        if self.method is not None:
            selector_class(self.method)
        check_policy(self.policy)
        check_budget_value(self.budget)
        if self.anchors and (self.front or self.back):
            raise HfKlasError("Both anchors=[...] and front/back were given.",
                              "Pass either anchors (k >= 2, the pair is chosen) or front [+ back].")
        if not self.anchors and not self.front:
            raise HfKlasError("No anchor was given.", "Pass front (and back), or anchors=[a, b, ...].")


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def batches_fingerprint(batches: list[dict] | None) -> str:
    """Hash of the calibration batches' tensors (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for batch in batches or []:
        for k in sorted(batch):
            v = batch[k]
            t = torch.as_tensor(v)
            h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def parse_device_map(value):
    """A device map as given (None, "auto", a device name, a dict) or its JSON text (the command line)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise HfKlasError(f"device_map {value!r} is not valid JSON ({err}).",
                              "Pass 'auto', a device such as 'cuda:0', or e.g. '{\"\": \"cuda:0\"}'.") from err
    if value is not None and not isinstance(value, (str, dict)):
        raise HfKlasError(f"device_map must be a string or a dict, got {type(value).__name__}.",
                          "Pass 'auto', a device such as 'cuda:0', or a module -> device dict.")
    return value


def plan_cache_key(front: Anchor, back: Anchor | None, method: str, method_params: dict, calibration_fp: str,
                   seq_len: int | None, image_size) -> str:
    payload = {
        "front": front.cache_key(), "back": "self" if back is None else back.cache_key(), "method": method,
        "params": method_params, "calibration": calibration_fp, "seq_len": seq_len, "image_size": image_size,
        "hf_klas": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def plan_cache_dir() -> Path:
    return cache_dir() / "plans"


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise HfKlasError(f"Unknown budget policy {policy!r}.", f"Use one of {POLICIES}.")


def check_budget_value(budget) -> None:
    """A budget must be a positive number (FLOPs, or a fraction of the back anchor); None = no budget."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise BudgetError(f"Budget {budget!r} is not a positive number.",
                          "Pass FLOPs (e.g. 2.5e9) or a fraction in (0, 1] of the back anchor's FLOPs (e.g. 0.6).")


def _dry_plan(front: Anchor, back: Anchor, same: bool, seq_len, image_size) -> StitchPlan:
    """A score-free plan used only to validate a budget before any anchor runs (same checks, same message);
    its FLOPs/params grids are handed on to the selector, so they are computed once."""
    flops, params, a_flops = grids(front.config, back.config, seq_len, image_size, same=same)
    m, n = flops.shape
    return StitchPlan(method="budget-check", front=front.descriptor(), back=back.descriptor(),
                      score=torch.zeros(m, n, dtype=torch.float64), flops=flops, valid_mask=valid_mask(m, n, same),
                      anchor_flops=a_flops, params=params)


def check_plan_matches(plan: StitchPlan, front: Anchor, back: Anchor) -> None:
    """Refuse a plan computed for other anchors (other block counts, widths, families or fingerprints)."""
    for side, desc, anchor in (("front", plan.front, front), ("back", plan.back, back)):
        mine = anchor.descriptor()
        for key in ("num_blocks", "hidden_size", "model_type", "fingerprint"):
            theirs = getattr(desc, key)
            if theirs and theirs != getattr(mine, key):
                raise HfKlasError(
                    f"The plan's {side} anchor ({desc.name_or_path}, {key}={theirs!r}) is not the {side} anchor "
                    f"given ({mine.name_or_path}, {key}={getattr(mine, key)!r}).",
                    "Pass the plan computed for these anchors, or leave plan out to select (cached) for them.")


def _resolve_pair(front, back):
    """Resolved anchors and whether they are one model; two anchors that cannot be stitched fail here."""
    front_anchor = resolve_anchor(front)
    back_anchor = front_anchor if back is None else resolve_anchor(back)
    same = same_anchor(front_anchor, back_anchor)
    back_anchor = front_anchor if same else back_anchor
    check_compatible(front_anchor.config, back_anchor.config)
    return front_anchor, back_anchor, same


# --------------------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------------------
def choose_selector(method: str | Selector | None, front: Anchor | None, same: bool | None,
                    config: SelectorConfig | None = None, **options) -> tuple[Selector, str]:
    """The selector to run and where its name came from: ``"named"`` (``method`` given) or ``"task default"``
    (``method=None``: :func:`~hf_klas.selection.selectors.default_method` of the front anchor's task and whether
    it is stitched to itself). A ``config`` parsed for another selector (the command line parses KLAS's flags
    when no ``--method`` is given) is carried over field by field; an option the default selector does not
    take fails with its name instead of being dropped."""
    if isinstance(method, Selector):
        return method, "named"
    if method is not None:
        return get_selector(method, config, **options), "named"
    name = default_method(task_of(front.config), bool(same))
    target = selector_class(name).config_class
    if config is not None and not isinstance(config, target):
        config = _carry_config(config, target, name)
    return get_selector(name, config, **options), "task default"


def _carry_config(config: SelectorConfig, target: type, name: str) -> SelectorConfig:
    """``config``'s values as a ``target`` config; a value set away from its default that ``target`` lacks fails."""
    known = {f.name for f in fields(target)}
    defaults = asdict(type(config)())
    lost = sorted(k for k, v in asdict(config).items() if k not in known and v != defaults[k])
    if lost:
        raise HfKlasError(
            f"Option(s) {', '.join(lost)} belong to {type(config).__name__}, but the default selector for this "
            f"pair is {name!r} ({target.__name__}), which does not take them.",
            f"Name the selector with --method (method=...), e.g. --method klas, or drop {', '.join(lost)}.")
    return target(**{k: v for k, v in asdict(config).items() if k in known})


def compute_plan(front, back=None, calibration=None, method: str | Selector | None = None, *, cache: bool = True,
                 progress: bool = True, seq_len: int | None = None, image_size=None, batch_size: int = 8,
                 max_length: int = DEFAULT_SEQ_LEN, max_samples: int | None = 64, grids_=None, device_map=None,
                 offload_folder: str | None = None, **selector_options):
    """The plan for ``front -> back`` (``back=None``: self-stitching) with ``method`` (a name with its options
    as keywords, a built :class:`Selector`, or None for the task's default, :func:`choose_selector`); returns
    ``(plan, info)`` with ``info["cached"]`` telling whether the cache answered (no anchor ran) and
    ``info["method_source"]`` whether the method was named or came from the task default. ``grids_``: the
    ``(flops, params)`` grids when the caller has them.
    ``device_map`` / ``offload_folder``: placement of anchors loaded from disk (not part of the cache key: it
    changes where the work runs, not the plan).

    Under ``accelerate launch`` with several processes every process calls this with the same arguments: KLAS
    scores each process's share of the calibration batches and adds the sums up (:mod:`.distributed`), every
    process returns the same plan, and only the main process writes the cache."""
    t0 = time.perf_counter()
    named = method is not None  # a named method's options fail before any anchor loads
    selector = choose_selector(method, None, None, **selector_options)[0] if named else None
    front_anchor, back_anchor, same = _resolve_pair(front, back)
    selector, source = (selector, "named") if named else choose_selector(None, front_anchor, same, **selector_options)
    method = selector.name
    selector.check_pair(same)
    lm = task_of(front_anchor.config) == CAUSAL_LM
    seq_len = (seq_len or DEFAULT_SEQ_LEN) if lm else None
    batches = None
    if selector.needs_data:
        preprocessor = front_anchor.load_preprocessor() or back_anchor.load_preprocessor()
        batches = calibration_batches(calibration, front_anchor.config, preprocessor, batch_size=batch_size,
                                      max_length=max_length, max_samples=max_samples)
        if not batches:
            raise CalibrationError("The calibration data produced no batches.", "Pass non-empty calibration data.")
    calib_fp = batches_fingerprint(batches) if batches else "none"
    params = selector.method_params()
    key = plan_cache_key(front_anchor, None if same else back_anchor, method, params, calib_fp, seq_len, image_size)
    path = plan_cache_dir() / key
    plan = _cached_plan(path, front_anchor, back_anchor) if cache else None
    if all_true(plan is not None):  # data-parallel: the cache answers only if it answers every process
        return plan, {"cached": True, "cache_path": str(path), "seconds": time.perf_counter() - t0,
                      "method_source": source}
    info_cal = {
        "fingerprint": calib_fp,
        "source": "default (hf_klas.calibration)" if calibration is None else "user",
        "batches": len(batches or []),
        "samples": sum(int(next(iter(b.values())).shape[0]) for b in batches or []),
        "max_length": max_length if lm else None,
    }
    if batches and lm:
        info_cal["tokens"] = int(sum(int(b["attention_mask"].sum()) if "attention_mask" in b
                                     else b["input_ids"].numel() for b in batches))
    flops, params = grids_ if grids_ is not None else (None, None)
    plan = selector.select(front_anchor, None if same else back_anchor, batches, flops, params, seq_len=seq_len,
                           image_size=image_size, progress=progress, calibration_info=info_cal,
                           device_map=parse_device_map(device_map), offload_folder=offload_folder)
    if cache and is_main_process():
        plan.save(path, overwrite=True)
    wait_for_everyone()
    info = {"cached": False, "cache_path": str(path) if cache else None, "seconds": time.perf_counter() - t0,
            "processes": num_processes(), "method_source": source, **selector.last_stats}
    return plan, info


def _cached_plan(path: Path, front: Anchor, back: Anchor) -> StitchPlan | None:
    """The cached plan at ``path`` when it is readable and belongs to these anchors, else None."""
    if not (path / PLAN_FILE).is_file():
        return None
    try:
        plan = StitchPlan.load(path)
        check_plan_matches(plan, front, back)
        return plan
    except HfKlasError:
        return None  # unreadable / foreign entry: recompute and overwrite it


def select_for_budget(front_anchor, back_anchor=None, budget_flops: float | None = None, calibration=None,
                      method: str | Selector | None = None, plan=None, progress: bool = True, *,
                      policy: str = "top_bucket", cache: bool = True, seq_len: int | None = None, image_size=None,
                      batch_size: int = 8, max_length: int = DEFAULT_SEQ_LEN, max_samples: int | None = 64,
                      **selector_options):
    """The configuration to build for ``budget_flops`` and the plan it came from: ``(Candidate, StitchPlan)``.

    ``plan``: a :class:`StitchPlan` or plan directory to reuse (no selection runs); otherwise the plan comes from
    the cache or is computed once (:func:`compute_plan`; ``method=None``: the task's default selector).
    ``budget_flops``: FLOPs, a fraction in (0, 1] of the back anchor's FLOPs, or None (= the back anchor's
    cost). ``policy`` ("top_bucket" | "lowest"): see
    :meth:`StitchPlan.best_for_budget`. A budget outside the feasible range raises
    :class:`~hf_klas.errors.BudgetError` with the range -- before any anchor runs.
    """
    check_policy(policy)
    check_budget_value(budget_flops)
    front, back, same = _resolve_pair(front_anchor, back_anchor)
    budget = 1.0 if budget_flops is None else budget_flops
    if plan is not None:
        if not isinstance(plan, StitchPlan):
            plan = StitchPlan.load(plan)
        check_plan_matches(plan, front, back)
        return plan.best_for_budget(budget, policy=policy), plan
    lm = task_of(front.config) == CAUSAL_LM
    dry = _dry_plan(front, back, same, (seq_len or DEFAULT_SEQ_LEN) if lm else None, image_size)
    dry.best_for_budget(budget)
    plan, _ = compute_plan(front, None if same else back, calibration, method, cache=cache, progress=progress,
                           seq_len=seq_len, image_size=image_size, batch_size=batch_size, max_length=max_length,
                           max_samples=max_samples, grids_=(dry.flops, dry.params), **selector_options)
    return plan.best_for_budget(budget, policy=policy), plan


# --------------------------------------------------------------------------------------------------------
# anchor selection (k >= 2)
# --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def select_anchors(anchors: list, calibration=None, *, symmetric: bool = False, progress: bool = True,
                   seq_len: int | None = None, batch_size: int = 8, max_length: int = 128,
                   max_samples: int | None = 64, max_chunk_mb: int = 256) -> list[dict]:
    """Rank every pair of ``anchors`` by the KL between their final output distributions (lowest first).

    Each pair is oriented cheaper -> dearer (front = the anchor with fewer FLOPs, KLAS's source f) and scored
    KL(P_front ‖ P_back) (``symmetric=True``: the mean of both directions). Every anchor runs once per batch;
    the final distributions are streamed in token chunks (no [tokens, vocab] tensor of the whole data).
    Returns dicts ``{"front", "back", "final_kl", "front_flops", "back_flops", "front_index", "back_index"}``;
    the first entry is the pair to stitch (the rule of :func:`hf_klas.selection.scoring.select_anchor_pair`).
    """
    anchors = list(anchors or [])
    if len(anchors) < 2:
        raise StitchPointError(
            f"Anchor selection (cross-model stitching) needs at least 2 anchors; got {len(anchors)}.",
            "Pass two or more anchors of one family (e.g. ['llama-1b', 'llama-3b']), or stitch a single anchor "
            "to itself with select_for_budget(anchor, None, ...) / SelectOptions(front=..., back=None).")
    resolved = [resolve_anchor(a) for a in anchors]
    for other in resolved[1:]:
        check_compatible(resolved[0].config, other.config)
    names = [str(a.name_or_path) for a in resolved]
    lm = task_of(resolved[0].config) == CAUSAL_LM
    sl = (seq_len or DEFAULT_SEQ_LEN) if lm else None
    costs = [float(anchor_flops(a.config, seq_len=sl).total) for a in resolved]
    pre = next((p for p in (a.load_preprocessor() for a in resolved) if p is not None), None)
    batches = calibration_batches(calibration, resolved[0].config, pre, batch_size=batch_size,
                                  max_length=max_length, max_samples=max_samples)
    models = [load_model(a) for a in resolved]
    lenses = [LogitLens(mdl) for mdl in models]
    acc = FinalOutputKLAccumulator(names)
    classes = lenses[0].num_classes
    chunk = max(1, max_chunk_mb * 2**20 // (4 * len(models) * classes))
    from tqdm.auto import tqdm

    for batch in tqdm(batches, desc="anchor selection: final outputs", disable=not progress, unit="batch"):
        mask = batch.get("attention_mask") if lm else None
        finals = []
        for mdl, lens in zip(models, lenses):
            n = mdl.config.num_hidden_layers
            finals.append(lens.features(run_prefix(mdl, batch, upto=n)[n], mask))
        for s in range(0, finals[0].shape[0], chunk):
            acc.update([lens.log_probs(f[s:s + chunk].unsqueeze(0), [lens.num_points - 1])[0]
                        for lens, f in zip(lenses, finals)])
    kl = acc.mean()
    ranked = []
    for a in range(len(resolved)):
        for b in range(a + 1, len(resolved)):
            lo, hi = (a, b) if costs[a] <= costs[b] else (b, a)
            score = (float(kl[lo, hi]) + float(kl[hi, lo])) / 2 if symmetric else float(kl[lo, hi])
            ranked.append({"front": names[lo], "back": names[hi], "final_kl": score, "front_flops": costs[lo],
                           "back_flops": costs[hi], "front_index": lo, "back_index": hi})
    ranked.sort(key=lambda r: (r["final_kl"], r["front_flops"] + r["back_flops"]))
    return ranked


# --------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------
def run_select(opts: SelectOptions | None = None, selector: SelectorConfig | None = None, **kwargs) -> dict:
    """``hf-klas select``: write ``<out_dir>/plan.json``, ``heatmap.png``, ``candidates.png``; return a summary.

    ``selector``: the method's config (``KlasConfig(probe="tuned_lens")``); ``kwargs`` may mix
    :class:`SelectOptions` fields and the method's options (``run_select(opts, method="cka", max_tokens=512)``).
    """
    own = {f.name for f in fields(SelectOptions)}
    opts = replace(opts, **{k: v for k, v in kwargs.items() if k in own}) if opts is not None else \
        SelectOptions(**{k: v for k, v in kwargs.items() if k in own})
    method_options = {k: v for k, v in kwargs.items() if k not in own}
    # a named method's options fail now, before any anchor loads; the task default needs the anchors first
    built = choose_selector(opts.method, None, None, selector, **method_options)[0] if opts.method else None
    t0 = time.perf_counter()
    out = Path(opts.out_dir)
    if (out / PLAN_FILE).exists() and not opts.overwrite:
        raise PlanExistsError(f"{out / PLAN_FILE} already exists.", "Choose another out_dir or pass overwrite=True.")
    calibration = calibration_from_path(opts.calibration)
    summary: dict = {}
    if opts.anchors:
        ranking = select_anchors(opts.anchors, calibration, progress=opts.progress, seq_len=opts.seq_len,
                                 batch_size=opts.batch_size, max_length=opts.calibration_length,
                                 max_samples=opts.calibration_samples)
        front = opts.anchors[ranking[0]["front_index"]]
        back = opts.anchors[ranking[0]["back_index"]]
        summary["anchor_ranking"] = ranking
    else:
        front, back = opts.front, opts.back
    front_anchor, back_anchor, same = _resolve_pair(front, back)
    if built is None:
        built = choose_selector(None, front_anchor, same, selector, **method_options)[0]
    lm = task_of(front_anchor.config) == CAUSAL_LM
    dry = _dry_plan(front_anchor, back_anchor, same, opts.seq_len if lm else None, None)
    if opts.budget is not None:
        dry.best_for_budget(opts.budget)
    plan, info = compute_plan(front_anchor, None if same else back_anchor, calibration, built,
                              cache=opts.use_cache, progress=opts.progress, seq_len=opts.seq_len,
                              batch_size=opts.batch_size, max_length=opts.calibration_length,
                              max_samples=opts.calibration_samples, grids_=(dry.flops, dry.params),
                              device_map=opts.device_map, offload_folder=opts.offload_folder)
    chosen = plan.best_for_budget(opts.budget, policy=opts.policy) if opts.budget is not None else None
    files = [str(out / PLAN_FILE), str(out / "heatmap.png"), str(out / "candidates.png")]
    if is_main_process():  # data-parallel: every rank holds the same plan; one writes it
        plan.save(out, overwrite=opts.overwrite)
        plan.plot_heatmap(out / "heatmap.png")
        plan.plot_candidates(out / "candidates.png")
    wait_for_everyone()
    summary.update({
        "plan_dir": str(out),
        "files": files,
        "method": plan.method,
        "method_source": "named" if opts.method else "task default",
        "front": plan.front.name_or_path,
        "back": plan.back.name_or_path,
        "self_stitching": same,
        "grid": list(plan.shape),
        "valid_configurations": int(plan.valid_mask.sum()),
        "candidates": [c.to_dict() for c in plan.candidates],
        "chosen": None if chosen is None else chosen.to_dict(),
        "budget": opts.budget,
        "anchor_flops": list(plan.anchor_flops),
        "flops_unit": f"per sequence of {plan.seq_len} tokens" if plan.seq_len else "per image",
        "cached": info.get("cached", False),
        "seconds": time.perf_counter() - t0,
    })
    if "forward_calls" in info:
        summary["forward_calls"] = info["forward_calls"]
    if "memory" in plan.extra:
        summary["memory"] = plan.extra["memory"]
    summary["processes"] = num_processes()
    return summary


def cli_options(run_name: str, argv: list[str]) -> list[type]:
    """``hf-klas select``'s flags: :class:`SelectOptions` and the chosen ``--method``'s own config (KLAS's
    without ``--method``: the default depends on the anchors, unknown until they load, and
    :func:`choose_selector` carries the shared flags over to it)."""
    method = DEFAULT_METHOD
    for k, arg in enumerate(argv):
        if arg in ("--method",) and k + 1 < len(argv):
            method = argv[k + 1]
        elif arg.startswith("--method="):
            method = arg.split("=", 1)[1]
    return [SelectOptions, selector_class(method if method in SELECTORS else DEFAULT_METHOD).config_class]

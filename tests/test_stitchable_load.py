"""A stitchable model under load: a configuration per call (generate / forward / pipelines, with a KV cache),
one object used from many threads with different budgets, and set_stitch never reaching a call in flight."""

# ruff: noqa: F811  (the tests take test_stitchable's module fixtures, imported below, as parameters)

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_push_to_hub import hub  # noqa: F401  (the fixtures below import test_stitchable, which needs it)
from test_stitchable import (  # noqa: F401  (fixtures)
    ATOL,
    cross,
    ids,
    pixels,
    selfstitch,
    tiny_tokenizer,
    vision,
)
from transformers import pipeline

from hf_klas.anatomy import output_cache_field
from hf_klas.errors import BudgetError, HfKlasError, StitchPointError

GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture
def fast_switching():
    """Let Python threads swap every few microseconds, so the calls of different threads interleave finely."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def cache_of(out):
    return out[output_cache_field(type(out))]


# ---- one call, one configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["cross", "selfstitch"])
def test_generate_with_a_per_call_configuration_equals_its_extracted_model(which, request):
    model = request.getfixturevalue(which)
    model = model[1] if isinstance(model, tuple) else model
    stitches = model.config.stitches
    default = model.set_stitch(stitches[0])
    x = ids(length=12)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    for kw in ({}, {"cache_implementation": "static"}):
        for c in stitches[1:] + stitches[:1] + stitches[1:]:  # interleaved: no cache state leaks between configs
            want = model.extract(*c).generate(x, attention_mask=mask, use_cache=False, **GREEDY)
            got = model.generate(x, attention_mask=mask, stitch=c, **GREEDY, **kw)
            assert torch.equal(got, want), (c, kw)
            assert model.active_stitch == default and model.config.active_stitch == default
    assert model.config.num_hidden_layers == default[0] + model.config.back_config.num_hidden_layers - default[1]


def test_a_per_call_budget_follows_set_budgets_rule_and_leaves_the_default(cross):
    flops = {c: cross.config.entry(*c)["flops"] for c in cross.config.stitches}
    default = cross.set_stitch(max(flops, key=flops.get))
    x = ids()
    for budget in sorted(flops.values()) + [0.5, 1.0]:
        if budget <= 1 and budget * cross.config.budget_flops_of(1.0) < min(flops.values()):
            continue
        chosen = cross.config.budget_stitch(budget)
        want = cross.extract(*chosen).generate(x, **GREEDY)
        assert torch.equal(cross.generate(x, budget_flops=budget, **GREEDY), want), budget
        with torch.no_grad():
            assert torch.equal(cross(x, budget_flops=budget).logits, cross(x, stitch=chosen).logits)
        assert cross.active_stitch == default
    with pytest.raises(BudgetError, match="below every configuration"):
        cross.generate(x, budget_flops=min(flops.values()) - 1, **GREEDY)
    with pytest.raises(HfKlasError, match="not both"):
        cross.generate(x, stitch=(1, 2), budget_flops=0.5, **GREEDY)
    with pytest.raises(StitchPointError, match="not in this supernet"):
        cross.generate(x, stitch=(3, 3), **GREEDY)
    assert cross.active_stitch == default


@torch.no_grad()
def test_forward_with_a_per_call_configuration_keeps_a_kv_cache_tagged_with_it(cross):
    default = cross.set_stitch(3, 0)
    x = ids()
    nxt = ids(length=1, seed=7)
    for c in [(1, 2), (4, 5), (2, 3)]:
        single = cross.extract(*c)
        out = cross(x, stitch=c, use_cache=True)
        cache = cache_of(out)
        assert cache is not None and len(cache.layers) == c[0] + 6 - c[1]  # sized for the call's stack
        step = cross(nxt, stitch=c, past_key_values=cache).logits[:, -1]
        full = single(torch.cat([x, nxt], 1), use_cache=False).logits[:, -1]
        assert torch.allclose(step, full, atol=ATOL), c
        other = (4, 5) if c != (4, 5) else (1, 2)
        with pytest.raises(StitchPointError, match=rf"holds 11 tokens of stitch configuration \({c[0]}, {c[1]}\)"):
            cross(nxt, stitch=other, past_key_values=cache)
        with pytest.raises(StitchPointError, match="holds 11 tokens"):  # nor by the default configuration
            cross(nxt, past_key_values=cache)
    assert cross.active_stitch == default


def test_use_stitch_is_this_threads_and_model_config_describes_the_call(cross):
    default = cross.set_stitch(3, 0)
    seen = {}
    with cross.use_stitch(1, 2):
        assert cross.active_stitch == (1, 2) and cross.config.num_hidden_layers == 1 + 6 - 2
        assert cross.default_config.active_stitch == default

        def other_thread():
            seen["active"] = cross.active_stitch
            seen["layers"] = cross.config.num_hidden_layers

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        cross.set_stitch(2, 3)  # the default moves; this thread's block keeps running (1, 2)
        assert cross.active_stitch == (1, 2)
    assert seen == {"active": default, "layers": 3 + 6 - 0}
    assert cross.active_stitch == (2, 3)
    cross.set_stitch(default)


def test_pipelines_take_a_configuration_per_call(cross):
    tok = tiny_tokenizer()
    generate = pipeline("text-generation", model=cross, tokenizer=tok)
    prompt = "t5 t9 t17 t33 t65"
    x = tok(prompt, return_tensors="pt")["input_ids"]
    default = cross.set_stitch(3, 0)
    cheapest = min(cross.config.stitch_configs, key=lambda e: e["flops"])
    budget = cheapest["flops"]
    for kwargs, c in (({"stitch": (1, 2)}, (1, 2)), ({"stitch": [4, 5]}, (4, 5)),
                      ({"budget_flops": budget}, (cheapest["front_blocks"], cheapest["back_start"]))):
        out = generate(prompt, max_new_tokens=4, do_sample=False, return_tensors=True, **kwargs)
        want = cross.extract(*c).generate(x, max_new_tokens=4, do_sample=False)[0].tolist()
        assert list(out[0]["generated_token_ids"]) == want
        assert cross.active_stitch == default


def test_image_classification_takes_a_configuration_per_call(vision):
    x = pixels()
    default = vision.set_stitch(3, 3)
    with torch.no_grad():
        for c in vision.config.stitches:
            want = vision.extract(*c)(pixel_values=x).logits
            assert torch.equal(vision(pixel_values=x, stitch=c).logits, want)
            with vision.use_stitch(c):
                assert torch.equal(vision(pixel_values=x).logits, want)
        cheapest = min(vision.config.stitch_configs, key=lambda e: e["flops"])
        assert torch.equal(vision(pixel_values=x, budget_flops=cheapest["flops"]).logits,
                           vision(pixel_values=x, stitch=(cheapest["front_blocks"], cheapest["back_start"])).logits)
    assert vision.active_stitch == default


# ---- one object, many threads ----------------------------------------------------------------------------------
def run_threads(n: int, work, switcher=None):
    """``work(t)`` in ``n`` threads at once (and ``switcher(stop)`` in one more until they end); their errors."""
    stop = threading.Event()
    barrier = threading.Barrier(n + (switcher is not None))

    def start(fn, *a):
        barrier.wait()
        return fn(*a)

    with ThreadPoolExecutor(n + 1) as pool:
        side = pool.submit(start, switcher, stop) if switcher is not None else None
        results = [pool.submit(start, work, t) for t in range(n)]
        errors = [f.exception() for f in results]
        stop.set()
        if side is not None:
            errors.append(side.exception())
    return [e for e in errors if e is not None]


def switching(model):
    """A switcher for :func:`run_threads`: cycles the model-wide default through every configuration until told."""
    stitches = model.config.stitches

    def switcher(stop):
        k = 0
        while not stop.is_set():
            model.set_stitch(stitches[k % len(stitches)])
            k += 1
    return switcher


@pytest.mark.parametrize("which", ["cross", "selfstitch"])
def test_threads_with_their_own_budgets_get_exactly_the_sequential_outputs(which, request, fast_switching):
    """Six threads x every configuration (4), greedy, three rounds, on one object, while a seventh thread keeps
    switching the model-wide default: every output equals the sequential one of its configuration."""
    model = request.getfixturevalue(which)
    model = model[1] if isinstance(model, tuple) else model
    stitches = model.config.stitches
    model.set_stitch(stitches[0])
    prompts = [ids(batch=1 + k % 2, length=6 + k, seed=20 + k) for k in range(6)]
    want = {(c, k): model.generate(p, stitch=c, **GREEDY) for c in stitches for k, p in enumerate(prompts)}
    assert len({tuple(v[0].tolist()) for (c, k), v in want.items() if k == 0}) == len(stitches)  # they differ
    mismatches = []

    def work(t):
        for r in range(3):
            for k, p in enumerate(prompts):
                c = stitches[(t + k + r) % len(stitches)]
                if (t + r) % 3 == 2:  # some calls pick their configuration with use_stitch, others per call
                    with model.use_stitch(c):
                        got = model.generate(p, **GREEDY)
                else:
                    got = model.generate(p, stitch=c, **GREEDY)
                if not torch.equal(got, want[(c, k)]):
                    mismatches.append((t, r, k, c))

    errors = run_threads(6, work, switching(model))
    assert not errors, errors
    assert not mismatches, mismatches


def test_a_call_in_flight_keeps_the_default_it_started_with(cross, fast_switching):
    """Calls that name no configuration run the default as it was when they started, whole: never half of a
    switch, never changed by a set_stitch in flight."""
    stitches = cross.config.stitches
    x = ids(batch=1, length=8, seed=3)
    want = {c: cross.generate(x, stitch=c, **GREEDY) for c in stitches}
    bad = []

    def work(t):
        for _ in range(6):
            got = cross.generate(x, **GREEDY)
            if not any(torch.equal(got, w) for w in want.values()):
                bad.append(t)

    errors = run_threads(4, work, switching(cross))
    assert not errors, errors
    assert not bad
    # and a call pinned when it starts ignores a switch made while it runs
    cross.set_stitch(1, 2)
    started, resume = threading.Event(), threading.Event()
    from transformers import LogitsProcessor, LogitsProcessorList

    class Pause(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == x.shape[1] + 2:
                started.set()
                resume.wait(30)
            return scores

    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "out", cross.generate(x, logits_processor=LogitsProcessorList([Pause()]), **GREEDY)))
    t.start()
    assert started.wait(30)
    cross.set_stitch(4, 5)  # while the call is half way
    resume.set()
    t.join()
    assert torch.equal(result["out"], want[(1, 2)])
    assert cross.active_stitch == (4, 5)


def test_image_classification_from_many_threads(vision, fast_switching):
    stitches = vision.config.stitches
    inputs = [pixels(n=2, seed=k) for k in range(4)]
    with torch.no_grad():
        want = {(c, k): vision(pixel_values=x, stitch=c).logits for c in stitches for k, x in enumerate(inputs)}
    mismatches = []

    @torch.no_grad()
    def work(t):
        for r in range(5):
            for k, x in enumerate(inputs):
                c = stitches[(t + k + r) % len(stitches)]
                if not torch.equal(vision(pixel_values=x, stitch=c).logits, want[(c, k)]):
                    mismatches.append((t, r, k, c))

    errors = run_threads(4, work, switching(vision))
    assert not errors, errors
    assert not mismatches, mismatches

"""The KV cache reaches every block, under the name the installed transformers uses, for every family.

transformers 5.24 renamed the cache argument ``past_key_values`` -> ``cache`` in model forwards, decoder layers,
mask builders, ``generate()`` and output classes. A block handed the cache under a name it does not declare
swallows it in ``**kwargs`` and decodes every new token without its history -- full-sequence logits stay right,
cached generation becomes garbage, nothing raises. These tests fail in that case on every tested version.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tiny import DECODER_FAMILIES, decoder_anchor
from transformers import AutoModelForCausalLM
from transformers.cache_utils import Cache

import hf_klas  # noqa: F401  (registers the Auto classes)
from hf_klas import StitchedModel
from hf_klas.anatomy import cache_argument, layer_cache_argument, output_cache_field
from hf_klas.errors import HfKlasError, UnsupportedTransformersError
from hf_klas.version import TRANSFORMERS_RANGE

ATOL = 1e-4
LENGTH = 12  # longer than the sliding windows of the tiny families


def ids(batch=2, length=LENGTH, seed=1, vocab=128):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def cache_of(out):
    return out[output_cache_field(type(out))]


def stitches(family):
    """A cross-stitch with the 1B->3B shape relations and a self-stitch that skips blocks (equal shapes: only
    distinct cache slots keep the parts apart)."""
    front, back = decoder_anchor(family), decoder_anchor(family, seed=1, wide=True, layers=6)
    calib = [ids(1, 16, seed=s)[0] for s in range(4)]
    yield "cross", StitchedModel.from_anchors(front, back, front_blocks=2, back_start=3, calibration=calib,
                                              progress=False)
    yield "skip", StitchedModel.from_anchors(front, front_blocks=1, back_start=3, calibration=calib, progress=False)


CASES = [(f, kind, model) for f in DECODER_FAMILIES for kind, model in stitches(f)]


@pytest.fixture(params=CASES, ids=[f"{f}-{k}" for f, k, _ in CASES])
def case(request):
    return request.param


def test_step_by_step_cached_decoding_equals_the_uncached_forward(case):
    family, kind, model = case
    x = ids()
    full = model(x, use_cache=False).logits
    out = model(x[:, :5], use_cache=True)
    cache, steps = cache_of(out), [out.logits]
    assert isinstance(cache, Cache) and cache.get_seq_length() == 5
    for t in range(5, LENGTH):
        # the cache under the installed transformers' own name, the way its generate() passes it
        out = model(x[:, t:t + 1], use_cache=True, **{output_cache_field(type(out)): cache})
        assert cache_of(out) is cache
        steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL), (family, kind)


def test_both_cache_names_are_accepted_and_two_caches_refused(case):
    family, kind, model = case
    x = ids()
    full = model(x, use_cache=False).logits
    for name in ("cache", "past_key_values"):
        cache = cache_of(model(x[:, :-1], use_cache=True))
        last = model(x[:, -1:], use_cache=True, **{name: cache}).logits
        assert torch.allclose(last[:, -1], full[:, -1], atol=ATOL), (family, kind, name)
    a, b = cache_of(model(x, use_cache=True)), cache_of(model(x, use_cache=True))
    with pytest.raises(HfKlasError, match="Two different KV caches"):
        model(x[:, -1:], cache=a, past_key_values=b)


def test_generate_dynamic_static_and_uncached_agree(case):
    family, kind, model = case
    x = ids()
    dynamic = model.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(dynamic, model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)), family
    assert torch.equal(dynamic, model.generate(x, max_new_tokens=6, do_sample=False,
                                               cache_implementation="static")), family


def test_left_padded_batch_continues_like_the_unpadded_prompt(case):
    family, kind, model = case
    long, short = ids(1, 10, seed=2), ids(1, 7, seed=3)
    batch = torch.full((2, 10), model.config.pad_token_id)
    mask = torch.zeros((2, 10), dtype=torch.long)
    batch[0], mask[0] = long[0], 1
    batch[1, 3:], mask[1, 3:] = short[0], 1
    # min_new_tokens: an early EOS in one row would pad it and hide the comparison
    out = model.generate(batch, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    alone = model.generate(short, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(out[1, 10:], alone[0, 7:]), family


def test_every_block_receives_the_generate_cache_under_its_declared_name(case):
    """A spy on every block during generate(): the cache object arrives under the name the block's class
    declares, and no cache rides along under any other name."""
    family, kind, model = case
    seen = []

    def spy(block, args, kwargs):
        name = layer_cache_argument(block)
        assert isinstance(kwargs.get(name), Cache), f"{type(block).__name__} got no cache as {name!r}"
        stray = [k for k, v in kwargs.items() if isinstance(v, Cache) and k != name]
        assert not stray, f"{type(block).__name__} got a cache under {stray}"
        seen.append(id(kwargs[name]))

    blocks = list(model.front_blocks) + list(model.back_blocks)
    handles = [b.register_forward_pre_hook(spy, with_kwargs=True) for b in blocks]
    try:
        model.generate(ids(1), max_new_tokens=3, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 3 * len(blocks) and len(set(seen)) == 1  # one cache, every block, every step


def test_logits_to_keep_with_a_cache(case):
    family, kind, model = case
    x = ids()
    out = model(x, use_cache=True, logits_to_keep=1)
    assert out.logits.shape[1] == 1
    assert torch.allclose(out.logits[:, -1], model(x, use_cache=False).logits[:, -1], atol=ATOL)


def test_a_layer_without_a_known_cache_argument_is_refused(monkeypatch):
    """If a future transformers renames the cache again, building fails loudly instead of decoding garbage."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    def forward(self, hidden_states, attention_mask=None, kv_state=None, **kwargs):  # an unknown name
        return hidden_states

    cache_argument.cache_clear()
    monkeypatch.setattr(LlamaDecoderLayer, "forward", forward)
    try:
        with pytest.raises(UnsupportedTransformersError) as err:
            StitchedModel.from_anchors(decoder_anchor("llama"), front_blocks=2, back_start=2, stitch_init="identity")
        import transformers

        assert transformers.__version__ in str(err.value) and TRANSFORMERS_RANGE in str(err.value)
        assert "pip install" in str(err.value)
    finally:
        cache_argument.cache_clear()


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_reloaded_model_generates_with_its_cache_with_and_without_hf_klas(family, tmp_path):
    model = dict(stitches(family))["cross"]
    model.save_pretrained(tmp_path)
    x = ids()
    expected = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.generate(x, max_new_tokens=6, do_sample=False), expected)
    from test_stitched_causal_lm import BLOCK_HF_KLAS

    code = BLOCK_HF_KLAS + f"""
import torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
assert "hf_klas" not in sys.modules
x = torch.tensor({x.tolist()!r})
for kw in ({{}}, {{"cache_implementation": "static"}}):
    print(m.generate(x, max_new_tokens=6, do_sample=False, **kw).tolist())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for line in res.stdout.strip().splitlines()[-2:]:
        assert torch.equal(torch.tensor(eval(line)), expected)

"""push_to_hub goes through the standard mixin; what would be uploaded is checked with the Hub API stubbed."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.hf_api import RepoUrl
from tiny import llama_pair

from hf_klas import StitchedModel
from hf_klas.model_card import CARD_MARKER


@pytest.fixture
def hub(monkeypatch):
    uploaded = {}
    remote_readme = {"text": None}

    def create_repo(self, repo_id, **kw):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kw):
        for op in operations:
            obj = op.path_or_fileobj
            uploaded[op.path_in_repo] = open(obj, "rb").read() if isinstance(obj, str) else obj

        class Info:
            oid, commit_url, pr_url = "0" * 40, "https://huggingface.co/x", None

        return Info()

    def load(repo_id, **kw):
        if remote_readme["text"] is None:
            raise EntryNotFoundError("no README")
        return ModelCard(remote_readme["text"])

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    # huggingface_hub also exports module-level functions bound to a default HfApi at import time
    import huggingface_hub
    import transformers.utils.hub as hub_utils

    for mod in (huggingface_hub, huggingface_hub.hf_api, hub_utils):
        if hasattr(mod, "create_repo"):
            monkeypatch.setattr(mod, "create_repo", lambda repo_id, **kw: create_repo(None, repo_id, **kw))
        if hasattr(mod, "create_commit"):
            monkeypatch.setattr(mod, "create_commit", lambda repo_id, operations, **kw: create_commit(
                None, repo_id, operations, **kw))
    monkeypatch.setattr(ModelCard, "load", staticmethod(load))
    return uploaded, remote_readme


def test_push_uploads_weights_code_and_our_card(hub):
    uploaded, _ = hub
    f, b = llama_pair()
    m = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, stitch_init="identity")
    m.push_to_hub("me/stitched", token="hf_test")
    for name in ("config.json", "model.safetensors", "modeling_stitched.py", "configuration_stitched.py",
                 "anatomy.py", "README.md"):
        assert name in uploaded, sorted(uploaded)
    readme = uploaded["README.md"].decode() if isinstance(uploaded["README.md"], bytes) else str(uploaded["README.md"])
    assert CARD_MARKER in readme and "(2, 3)" in readme


def test_push_keeps_a_user_written_remote_readme(hub):
    uploaded, remote = hub
    remote["text"] = "---\nlicense: mit\n---\nMy own card, written by hand."
    f, b = llama_pair()
    m = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, stitch_init="identity")
    m.push_to_hub("me/stitched", token="hf_test")
    readme = uploaded["README.md"].decode() if isinstance(uploaded["README.md"], bytes) else str(uploaded["README.md"])
    assert "My own card, written by hand." in readme and CARD_MARKER not in readme

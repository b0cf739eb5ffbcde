import hashlib

import pytest

from llm_almanac.prompts import PromptError, PromptFactory, TokenizerError, load_tokenizer

from conftest import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize("isl", [4, 5, 17, 128, 1000])
def test_exact_length_including_special_tokens(tokenizer, isl):
    pf = PromptFactory(tokenizer, isl, seed=3)
    assert pf.n_special == 1
    for rid in range(20):
        assert pf.count(pf.make(rid)) == isl


def test_unique_deterministic_and_distinct_starts(tokenizer):
    pf = PromptFactory(tokenizer, 64)
    prompts = [pf.make(i) for i in range(200)]
    assert len(set(prompts)) == 200
    assert len({p[:8] for p in prompts[:10]}) == 10  # differ from the first characters on
    assert pf.make(5) == PromptFactory(tokenizer, 64).make(5)
    assert pf.make(5) != PromptFactory(tokenizer, 64, seed=1).make(5)


def test_too_short_isl_is_rejected(tokenizer):
    with pytest.raises(PromptError, match="isl=3"):
        PromptFactory(tokenizer, 3)


# -- where the tokenizer comes from (almanac bench --tokenizer) ------------------------------------
@pytest.fixture
def tok_dir(tmp_path, tokenizer):
    d = tmp_path / "SmolLM2-mini"
    d.mkdir()
    tokenizer.save(str(d / "tokenizer.json"))
    return d


def test_a_local_folder_or_file_is_read_and_hashed(tok_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("a local path went to the Hub"))
    want = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    for spec in (str(tok_dir), str(tok_dir / "tokenizer.json")):
        loaded = load_tokenizer(spec)
        assert loaded.sha256 == want and loaded.source == str(tok_dir / "tokenizer.json")
        assert PromptFactory(loaded.tokenizer, 16).count(PromptFactory(loaded.tokenizer, 16).make(1)) == 16


def test_a_folder_without_tokenizer_json_names_what_to_do(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"sentencepiece")
    with pytest.raises(TokenizerError, match="the folder has no tokenizer.json; converting its other tokenizer files "
                                             "needs the transformers package"):
        load_tokenizer(str(tmp_path))


def test_a_hub_id_is_fetched_with_hf_token(tok_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw["token"], kw["local_files_only"]))
        return str(tok_dir / "tokenizer.json")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET123456")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loaded = load_tokenizer("HuggingFaceTB/SmolLM2-135M")
    assert calls == [("HuggingFaceTB/SmolLM2-135M", "tokenizer.json", "hf_SECRET123456", False)]
    assert loaded.source == "HuggingFaceTB/SmolLM2-135M"
    assert loaded.sha256 == hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read when called, not when huggingface_hub was imported
    load_tokenizer("HuggingFaceTB/SmolLM2-135M")
    assert calls[-1][-1] is True


def test_hub_failures_name_the_repo_and_never_the_token(monkeypatch):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    secret = "hf_SECRET123456"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    resp = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/org/m"))
    cases = {
        GatedRepoError("gated", response=resp): "the Hugging Face Hub repository org/m is gated: set HF_TOKEN",
        RepositoryNotFoundError("nope", response=resp): "no Hugging Face Hub repository org/m (or a private one",
        OSError(f"500 Server Error for token {secret}"): "could not be fetched: the Hub answered 500 Server Error",
        ConnectionError("no route"): "could not be fetched: the Hub could not be reached",
    }
    for exc, message in cases.items():
        def fail(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
        with pytest.raises(TokenizerError) as info:
            load_tokenizer("org/m")
        assert message in str(info.value) and secret not in str(info.value)
        assert "pass a local folder holding tokenizer.json with --tokenizer" in str(info.value)


def test_an_unknown_hub_id_offline_is_one_clear_error(monkeypatch):
    """The real huggingface_hub, offline: nothing cached under this id."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError) as info:
        load_tokenizer("almanac-tests/no-such-model")
    assert str(info.value).startswith(
        "no local folder of that name, and tokenizer.json of the Hugging Face Hub repository "
        "almanac-tests/no-such-model could not be fetched: HF_HUB_OFFLINE is set")
    with pytest.raises(TokenizerError, match="not a Hugging Face Hub id either"):
        load_tokenizer("not a repo!")
    with pytest.raises(TokenizerError, match="no tokenizer.json there"):
        load_tokenizer("./no/such/folder")

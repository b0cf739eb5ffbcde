import pytest

from llm_almanac.prompts import PromptError, PromptFactory

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

"""What RDS+ embeds: the chat-rendered tokens, starting with BOS once, cut to the length."""

import copy

import pytest

from dsel_assets.core.models.model_embeddings import embedding_ids

CONVERSATION = [
    {"role": "user", "content": "Add 12 and 30, then explain each step. " * 20},
    {"role": "assistant", "content": "12 + 30 = 42, because 10 + 30 = 40 and 2 more make 42. " * 20},
]


def test_smollm2_template_already_starts_with_its_bos_so_bos_adds_nothing(tokenizer):
    plain = embedding_ids(tokenizer, CONVERSATION, 4096, bos=False)
    with_bos = embedding_ids(tokenizer, CONVERSATION, 4096, bos=True)
    assert tokenizer.bos_token == "<|im_start|>" and plain[0] == tokenizer.bos_token_id
    assert with_bos == plain


def test_a_template_without_bos_gets_it_prepended_once_and_the_cut_keeps_the_start(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.bos_token = "<|endoftext|>"  # a BOS the rendered chat does not begin with
    plain = embedding_ids(other, CONVERSATION, 4096, bos=False)
    with_bos = embedding_ids(other, CONVERSATION, 4096, bos=True)
    assert with_bos == [other.bos_token_id, *plain] and plain[0] != other.bos_token_id
    assert len(plain) > 512
    assert embedding_ids(other, CONVERSATION, 512, bos=True) == with_bos[:512]
    assert embedding_ids(other, CONVERSATION, 512, bos=False) == plain[:512]


@pytest.mark.parametrize("length", [1, 7, 100])
def test_the_length_is_a_prefix_cut(tokenizer, length):
    full = embedding_ids(tokenizer, CONVERSATION, 10**6, bos=True)
    assert embedding_ids(tokenizer, CONVERSATION, length, bos=True) == full[:length]

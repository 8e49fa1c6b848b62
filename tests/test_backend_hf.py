import pytest
import torch

from cai_core.backends import BackendError, SamplingParams, load_backend
from cai_core.backends.base import stream, stripped
from cai_core.backends.hf import HFBackend

CHATS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "hi"}],
    [
        {
            "role": "user",
            "content": "Identify ways in which the last response is harmful, unethical or dishonest please.",
        }
    ],
]


@pytest.fixture(scope="module")
def backend(tiny_model_path):
    return HFBackend(tiny_model_path, batch_size=2)


def test_answers_come_back_in_input_order_across_length_sorted_batches(backend):
    out = backend.generate(CHATS, SamplingParams(max_new_tokens=5, temperature=0))
    expected_lengths = [len(ids) for ids in backend._encode(CHATS)]
    assert [g.prompt_tokens for g in out] == expected_lengths
    assert expected_lengths != sorted(expected_lengths)  # the batching really did reorder


def test_fixed_lengths_and_seeded_sampling(backend):
    params = SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=1.0, seed=3)
    first = backend.generate(CHATS, params)
    assert all(g.completion_tokens == 6 for g in first)
    assert [g.text for g in backend.generate(CHATS, params)] == [g.text for g in first]


def test_batched_greedy_matches_one_at_a_time(backend):
    params = SamplingParams(max_new_tokens=4, temperature=0)
    batched = [g.text for g in backend.generate(CHATS, params)]
    alone = [backend.generate([c], params)[0].text for c in CHATS]
    assert batched == alone


def test_option_scores_equal_a_direct_log_probability(backend):
    options = [" A", " B", "I cannot help"]
    scores = backend.score_options(CHATS[:2], options)
    tok = backend.tokenizer
    for chat, row in zip(CHATS[:2], scores, strict=True):
        prefix = tok(
            tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False
        )["input_ids"]
        for option, score in zip(options, row, strict=True):
            target = tok(option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prefix + target])
            with torch.no_grad():
                logprobs = torch.log_softmax(backend.model(ids).logits[0].float(), -1)
            direct = sum(float(logprobs[len(prefix) - 1 + k, t]) for k, t in enumerate(target))
            assert score == pytest.approx(direct, abs=1e-4)


def test_single_token_options_share_each_pairs_start_and_agree_with_one_pass_per_option(backend):
    question = "Which response is more helpful?\n(A) {}\n(B) {}\n\nAnswer with the letter of the better option."
    both_orders = [
        [{"role": "user", "content": question.format(a, b)}]
        for x, y in [("Bake it.", "No."), ("Sure, here is how.", "I will not.")]
        for a, b in [(x, y), (y, x)]
    ]
    uneven = [[{"role": "user", "content": "Same start. Short."}], [{"role": "user", "content": "Same start. " * 9}]]
    options = ["A", "B"]
    single = [backend.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    assert all(len(ids) == 1 for ids in single)  # so score_options takes the shared-start path
    for chats in (both_orders, both_orders[:3], uneven):  # pairs, an odd one out, tails of different lengths
        per_option = backend._score_sequences(backend._encode(chats), single)
        shared = backend.score_options(chats, options)
        assert torch.allclose(torch.tensor(shared), torch.tensor(per_option), atol=1e-4)


def test_a_missing_model_path_is_named(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        HFBackend(str(tmp_path / "no-such-model"))


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(BackendError, match="not a loadable transformers model"):
        HFBackend(str(tmp_path))


def test_an_unknown_hub_id_says_the_hub_is_unreachable():
    with pytest.raises(BackendError, match="not a local folder"):
        HFBackend("no-such-org/no-such-model")


def test_one_loaded_copy_per_process(tiny_model_path, workspace):
    assert load_backend(tiny_model_path, workspace) is load_backend(tiny_model_path, workspace)


def test_a_streamed_answer_comes_in_pieces_that_join_into_generates_text(backend):
    params = SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=1.0, seed=5)
    for chat in CHATS:
        pieces = list(backend.stream(chat, params))
        assert len(pieces) > 1  # token by token, not the whole answer at the end
        assert "".join(pieces) == backend.generate([chat], params)[0].text


def test_an_engine_without_streaming_gives_its_answer_as_one_piece(backend):
    class NoStreaming:  # the shape of the vLLM backend: generate only
        def generate(self, chats, params):
            return backend.generate(chats, params)

    params = SamplingParams(max_new_tokens=8, temperature=0)
    assert list(stream(NoStreaming(), CHATS[0], params)) == [backend.generate([CHATS[0]], params)[0].text]


def test_stream_failure_is_raised_in_the_callers_thread(backend):
    with pytest.raises(ValueError):
        list(backend.stream(CHATS[0], SamplingParams(max_new_tokens=4, temperature=1.0, top_p=-1.0)))


@pytest.mark.parametrize(
    ("pieces", "text"),
    [(["  Hel", "lo ", " ", "world  ", "\n"], "Hello  world"), (["", " "], ""), (["a"], "a")],
)
def test_streamed_pieces_are_stripped_as_a_generations_text(pieces, text):
    assert "".join(stripped(pieces)) == text

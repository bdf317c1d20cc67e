"""The shared training loop (schedule, optimiser, accumulation, exact resume, metrics), cleaning and packing."""

import json
import math

import pytest
import torch

from llama2_minimal.data import REDACTED, clean_corpus, deduplicate, pack, scrub_private, split_rows
from llama2_minimal.model import ModelArgs, Transformer
from llama2_minimal.train.loop import TrainConfig, cpu_supports_bf16, lr_at, make_optimizer, resolve_precision, train
from llama2_minimal.train.pretrain import RowBatches

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, multiple_of=16, max_seq_len=32)


def rows(n=24, seq=17, seed=0):
    return torch.randint(3, ARGS.vocab_size, (n, seq), generator=torch.Generator().manual_seed(seed))


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(ARGS)


# --- schedule and optimiser ---


def test_warmup_then_cosine_to_ten_percent():
    config = TrainConfig(steps=1000, lr=3e-4, warmup=100)
    assert lr_at(0, config) == pytest.approx(3e-6)
    assert lr_at(99, config) == pytest.approx(3e-4)  # the peak at the end of warmup
    assert lr_at(999, config) == pytest.approx(3e-5)  # 10% of the peak at the end
    middle = 100 + (999 - 100) / 2
    assert lr_at(int(middle), config) == pytest.approx(0.5 * (3e-4 + 3e-5), rel=1e-2)
    values = [lr_at(s, config) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decays monotonically
    assert lr_at(5, TrainConfig(steps=10, lr=1e-3, schedule="constant")) == 1e-3


def test_adamw_with_llama_2_settings_and_no_decay_on_norms():
    opt = make_optimizer(fresh_model(), TrainConfig(steps=1, lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW)
    decay, other = opt.param_groups
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-5 and decay["weight_decay"] == 0.1
    assert other["weight_decay"] == 0.0 and all(p.dim() == 1 for p in other["params"])
    assert all(p.dim() == 2 for p in decay["params"])


def test_a_parameter_with_an_lr_scale_learns_at_that_multiple_of_the_rate():
    model = fresh_model()
    scaled = model.norm.weight
    scaled.lr_scale = 30.0
    opt = make_optimizer(model, TrainConfig(steps=1, lr=1e-3))
    assert [g.get("lr_scale") for g in opt.param_groups] == [None, None, 30.0]
    assert opt.param_groups[2]["params"] == [scaled] and opt.param_groups[2]["weight_decay"] == 0.0
    assert all(p is not scaled for g in opt.param_groups[:2] for p in g["params"])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = TrainConfig(steps=1, lr=1e-3, warmup=1, precision="fp32")
    train(model, RowBatches(rows(), 8, 8), config, progress=False)
    moved = {name: float((p.detach() - before[name]).abs().max()) for name, p in model.named_parameters()}
    # Adam's first step moves every weight by about the learning rate: 30 times it for the scaled one
    assert moved["norm.weight"] == pytest.approx(30e-3, rel=0.05)
    assert moved["layers.0.attention_norm.weight"] == pytest.approx(1e-3, rel=0.05)


# --- the loop ---


def test_gradient_accumulation_equals_one_big_batch():
    data = rows()
    one = fresh_model()
    fp32 = {"precision": "fp32"}  # bf16 rounds the two differently; the loop's arithmetic is what is tested
    train(one, RowBatches(data, 8, 1), TrainConfig(steps=3, lr=1e-3, grad_accum=1, **fp32), progress=False)
    two = fresh_model()
    train(two, RowBatches(data, 8, 4), TrainConfig(steps=3, lr=1e-3, grad_accum=4, **fp32), progress=False)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, precision):
    data = rows()
    config = TrainConfig(steps=12, lr=3e-3, warmup=3, log_every=2, precision=precision)
    straight = fresh_model()
    train(straight, RowBatches(data, 8, 2), config, tmp_path / "a", progress=False)
    interrupted = fresh_model()
    train(interrupted, RowBatches(data, 8, 2), config, tmp_path / "b", progress=False, stop_after=5)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 5
    resumed = fresh_model(seed=123)  # a new process: other initial weights, replaced by the checkpoint's
    train(resumed, RowBatches(data, 8, 2), config, tmp_path / "b", progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    log = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = log("a"), log("b")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 3, 5, 7, 9, 11]
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert [m["tokens"] for m in a] == [m["tokens"] for m in b]  # the count goes on across the interruption


def test_training_lowers_the_loss_and_logs_metrics(tmp_path):
    data = rows(n=8)
    history = train(fresh_model(), RowBatches(data, 8, 1), TrainConfig(steps=30, lr=1e-2, warmup=3, log_every=5),
                    tmp_path, progress=False)  # fmt: skip
    assert history[-1]["loss"] < history[0]["loss"] - 1.0
    assert set(history[0]) == {"step", "loss", "lr", "grad_norm", "tokens", "seconds"}
    assert history[-1]["tokens"] == 30 * 8 * 16
    assert all(math.isfinite(m["grad_norm"]) for m in history)


# --- precision ---

CURVE_ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=64)
BF16_TOLERANCE = 0.1  # nats at every logged step; measured here: at most 0.03 over seeds 0-2 (in the steep part)


def test_bf16_autocast_runs_the_matmuls_in_bf16_and_keeps_the_loss_curve_of_fp32():
    data = torch.randint(3, 64, (16, 33), generator=torch.Generator().manual_seed(0))
    curves, seen = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Transformer(CURVE_ARGS)
        dtypes: set = set()
        model.layers[0].attention.wq.register_forward_hook(lambda m, i, out, seen=dtypes: seen.add(out.dtype))
        history = train(model, RowBatches(data, 8, 1), TrainConfig(steps=60, lr=1e-2, warmup=5, log_every=5,
                        precision=precision), progress=False)  # fmt: skip
        curves[precision], seen[precision] = [m["loss"] for m in history], dtypes
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert curves["fp32"][-1] < curves["fp32"][0] - 3  # a curve worth comparing: from 4 nats to near 0
    gaps = [abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"])]
    assert len(gaps) == 12 and max(gaps) < BF16_TOLERANCE, gaps
    assert max(gaps) > 0  # bf16 did change the arithmetic


def test_precision_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    epyc = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    old = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    graviton = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
    assert cpu_supports_bf16(epyc) and cpu_supports_bf16(graviton) and not cpu_supports_bf16(old)
    import llama2_minimal.train.loop as loop

    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        resolve_precision("fp16", "cpu")
    # a GPU that only emulates bf16 (what torch.cuda.is_bf16_supported() counts by default) trains in fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere and later
    assert resolve_precision("auto", "cuda") == "bf16"


def test_row_batches_cover_each_epoch_once_and_split_over_processes():
    data = torch.arange(12).view(12, 1).repeat(1, 3)
    batches = RowBatches(data, batch_size=4, grad_accum=1, seed=0)
    seen = torch.cat([batches(step, 0)["inputs"][:, 0] for step in range(3)])
    assert sorted(seen.tolist()) == list(range(12))  # one epoch: every row once
    whole = batches(5, 0)["inputs"]
    parts = [RowBatches(data, 4, 2, seed=0)(5, m, r, 2)["inputs"] for m in range(2) for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)  # 2 micro-batches x 2 processes = the same global batch
    with pytest.raises(ValueError, match="divide"):
        RowBatches(data, 4, 3)(0, 0)


# --- cleaning and packing ---


def test_scrub_private_data():
    text, phones, emails = scrub_private("Call Mira at 312-4578 or mira.holt@post.example, not 12 - 3.")
    assert text == f"Call Mira at {REDACTED} or {REDACTED}, not 12 - 3."
    assert (phones, emails) == (1, 1)


def test_clean_corpus_reports_what_it_removed():
    docs = ["a 123-4567", "b", "a 123-4567", "c x.y@mail.example"]
    cleaned, report = clean_corpus(docs)
    assert cleaned == [f"a {REDACTED}", "b", f"c {REDACTED}"]
    assert (report.duplicates_removed, report.phone_numbers_removed, report.emails_removed) == (1, 1, 1)
    assert deduplicate(["x", "y", "x", "y", "z"]) == ["x", "y", "z"]


def test_pack_wraps_documents_in_bos_eos_and_cuts_rows():
    packed = pack([[5, 6], [7], [8, 9, 10], [11]], seq_len=3, bos_id=1, eos_id=2)
    # The stream 1 5 6 2 1 7 2 1 8 9 10 2 1 11 2 cut into rows of 4; the incomplete rest (1 11 2) is dropped.
    assert packed.tolist() == [[1, 5, 6, 2], [1, 7, 2, 1], [8, 9, 10, 2]]
    with pytest.raises(ValueError, match="no row"):
        pack([[5]], seq_len=10, bos_id=1, eos_id=2)
    train_rows, val_rows = split_rows(torch.arange(40).view(20, 2), 0.1)
    assert len(val_rows) == 2 and len(train_rows) == 18
    assert set(train_rows[:, 0].tolist()).isdisjoint(val_rows[:, 0].tolist())

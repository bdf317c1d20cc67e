"""The command line: `llama2-minimal COMMAND ...` (or `python -m llama2_minimal COMMAND ...`).

convert SRC DST --to {meta,hf}      a Meta or Hugging Face checkpoint folder into the other layout
generate CKPT (--prompt TEXT | --ids "1 2 3") [--chat] ...   decode from a checkpoint folder
chat MODEL [--system TEXT] ...      talk to a chat model in the terminal (a folder or a stage: sft, rlhf-v2 ...)
export MODEL OUT.gguf               llama.cpp's format
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from . import __version__
from .profiles import PRECISIONS

PRECISION_HELP = ("training precision: auto (bf16 autocast where the CPU or GPU computes bf16 natively, fp32 "
                  "elsewhere), bf16 or fp32 (default: $LLAMA2_MINIMAL_PRECISION, else the profile's: fp32 for ci, "
                  "auto otherwise)")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu.")
    return name


def _parse_ids(text: str, vocab_size: int) -> list[int]:
    try:
        ids = [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError as err:
        raise ValueError(f'--ids takes whole numbers separated by spaces, e.g. --ids "1 450 4996": {err}') from None
    if not ids:
        raise ValueError('--ids is empty: give at least one token id, e.g. --ids "1".')
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"--ids {bad} are outside the model's vocabulary 0..{vocab_size - 1}.")
    return ids


# A model of about the size of transformers' tiny test Llama (3.15M parameters): the benchmarks' "tiny".
TINY_PARAMS = {"dim": 192, "n_layers": 4, "n_heads": 6, "n_kv_heads": 2, "vocab_size": 4096, "multiple_of": 32,
               "max_seq_len": 512}  # fmt: skip


def _model_args(spec: str, vocab_size: int | None):
    """ModelArgs from a name (tiny, 7B, 13B, 70B), a params.json / config.json, or a checkpoint folder."""
    import json

    from .checkpoint import HF_CONFIG, META_PARAMS, hf_config_to_args
    from .model import LLAMA2_PARAMS, LLAMA2_VOCAB_SIZE, ModelArgs

    names = {"tiny": TINY_PARAMS, **LLAMA2_PARAMS}
    path = Path(spec)
    if spec in names:
        params = dict(names[spec])
        if params["vocab_size"] == -1:
            params["vocab_size"] = LLAMA2_VOCAB_SIZE
    elif path.is_dir() and (path / META_PARAMS).is_file():
        return _model_args(str(path / META_PARAMS), vocab_size)
    elif path.is_dir() and (path / HF_CONFIG).is_file():
        return _model_args(str(path / HF_CONFIG), vocab_size)
    elif path.is_file():
        try:
            params = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a JSON file: {err}") from None
        if "hidden_size" in params:  # a Hugging Face config.json
            args = hf_config_to_args(params)
            return args if vocab_size is None else ModelArgs.from_params(args.to_params(), vocab_size=vocab_size)
        if params.get("vocab_size", -1) == -1:
            params["vocab_size"] = LLAMA2_VOCAB_SIZE
    else:
        raise ValueError(f"{spec!r} is neither one of {sorted(names)} nor a params.json, config.json or checkpoint.")
    if vocab_size is not None:
        params["vocab_size"] = vocab_size
    return ModelArgs.from_params(params)


def cmd_init(opts: argparse.Namespace) -> int:
    import torch

    from .checkpoint import save_checkpoint
    from .model import Transformer, count_parameters

    args = _model_args(opts.params, opts.vocab_size)
    torch.manual_seed(opts.seed)
    model = Transformer(args)
    save_checkpoint(model, opts.dst, layout=opts.layout, tokenizer_model=opts.tokenizer, overwrite=opts.force)
    print(f"wrote a randomly initialised model ({count_parameters(args):,} parameters) to {opts.dst} ({opts.layout})")
    return 0


def cmd_count(opts: argparse.Namespace) -> int:
    from .model import count_parameters, parameter_counts

    args = _model_args(opts.spec, opts.vocab_size)
    total = count_parameters(args)
    print(
        f"dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads ({args.kv_heads} key/value), "
        f"FFN {args.hidden_dim}, vocabulary {args.vocab_size}"
    )
    for part, n in parameter_counts(args).items():
        print(f"  {part:<16}{n:>16,}  {100 * n / total:5.1f}%")
    print(f"  {'total':<16}{total:>16,}")
    return 0


def cmd_convert(opts: argparse.Namespace) -> int:
    from .checkpoint import convert_checkpoint

    layout, dst = convert_checkpoint(opts.src, opts.dst, to=opts.to, overwrite=opts.force)
    print(f"converted the {layout} checkpoint {opts.src} to the {opts.to} checkpoint {dst}")
    return 0


def cmd_generate(opts: argparse.Namespace) -> int:
    import torch

    from .checkpoint import TOKENIZER_FILE, load_checkpoint
    from .generation import generate

    device = _device(opts.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(opts.dtype)
    if opts.ids is not None and opts.chat:
        raise ValueError("--chat formats a text prompt; use it with --prompt, not --ids.")
    tokenizer = None
    if opts.prompt is not None:
        path = Path(opts.ckpt) / TOKENIZER_FILE
        if not path.is_file():
            raise ValueError(
                f"{opts.ckpt} has no {TOKENIZER_FILE}, which --prompt needs: copy the tokenizer the model was "
                'trained with into the folder, or pass token ids with --ids "1 2 3".'
            )
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer(path)
    model = load_checkpoint(opts.ckpt, device=device, dtype=dtype)
    if dtype is None and device == "cpu" and model.tok_embeddings.weight.dtype != torch.float32:
        model = model.float()  # half precision is slow and lossy on a CPU
    model.eval()

    if tokenizer is None:
        prompt = _parse_ids(opts.ids, model.vocab_size)
        eos_id = 2
    elif opts.chat:
        from .chat import encode_dialog

        dialog = ([{"role": "system", "content": opts.system}] if opts.system else []) + [
            {"role": "user", "content": opts.prompt}
        ]
        prompt, eos_id = encode_dialog(dialog, tokenizer), tokenizer.eos_id
    else:
        prompt, eos_id = tokenizer.encode(opts.prompt, bos=True, eos=False), tokenizer.eos_id
    [out] = generate(
        model,
        [prompt],
        max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature,
        top_p=opts.top_p,
        eos_id=eos_id,
        seed=opts.seed,
    )
    if tokenizer is None:
        print(" ".join(map(str, out)))
    else:
        # Decoding prompt and continuation together keeps the space that starts the continuation (a lone
        # decode drops the leading space of its first piece); the prompt itself round-trips exactly.
        print(tokenizer.decode(out).strip() if opts.chat else tokenizer.decode(prompt + out))
    return 0


def cmd_pipeline(opts: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    if opts.threads is not None:
        if opts.threads < 1:
            raise ValueError(f"--threads must be 1 or more, got {opts.threads}")
        import torch

        torch.set_num_threads(opts.threads)
    run_pipeline(opts.profile, opts.out, seed=opts.seed, precision=opts.precision)
    return 0


def cmd_pretrain(opts: argparse.Namespace) -> int:
    """Pretraining alone; under `torchrun --nproc_per_node=N` every process trains its share of each global batch
    with DistributedDataParallel (gloo on CPU, nccl on CUDA)."""
    import torch
    import torch.distributed as dist

    from . import artifacts
    from .profiles import get_profile
    from .train.loop import init_distributed
    from .train.pretrain import pretrain

    profile = get_profile(opts.profile, precision=opts.precision)
    rank, world_size = init_distributed()
    if world_size > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # share the cores, do not fight
    clean = not opts.uncleaned
    tokenizer = artifacts.tokenizer_file(profile, opts.out)  # built once, under a lock
    settings = artifacts.pretrain_settings(profile, clean, opts.steps)
    stage = "pretrain" if clean else "pretrain-uncleaned"
    folder = artifacts.stage_folder(stage, profile, settings, opts.out)
    if (folder / artifacts.DONE).is_file():
        if rank == 0:
            print(f"already built: {folder} (delete it to train again)")
    else:
        work = artifacts.work_folder(folder)
        pretrain(profile, work, tokenizer, clean=clean, steps=opts.steps)
        if world_size > 1:
            dist.barrier()
        if rank == 0:
            artifacts.finish(work, folder, settings)
            print(f"pretrained with {world_size} process(es): {folder}")
    if world_size > 1:
        dist.destroy_process_group()
    return 0


def cmd_course(opts: argparse.Namespace) -> int:
    from .course import course_root, sync_course

    root = course_root()
    if opts.action == "execute":
        from .course.execute import execute_lessons

        times = execute_lessons(root, opts.lessons, profile=opts.profile)
        print("lesson times: " + ", ".join(f"{name} {t:.0f} s" for name, t in times.items()))
        opts.action = "sync"
    report = sync_course(root, check=opts.action == "check", force=opts.force)
    verb = "would change" if opts.action == "check" else "rewrote"
    for path in report.changed:
        print(f"{verb}: {path.relative_to(root)}")
    for path in report.protected:
        print(f"kept your edits: {path.relative_to(root)} (regenerate it with --force; your work will be lost)")
    for path in report.orphans:
        print(f"no solution notebook for {path.relative_to(root)}: remove it or add solutions/{path.name}")
    if opts.action == "check":
        if report.clean:
            print("every notebook is in normal form and exercises/ matches solutions/")
            return 0
        print("run `llama2-minimal course sync` and commit the result")
        return 1
    if not report.changed:
        print("nothing to change")
    return 0


# The course's models by stage name (chat and export take one instead of a folder): the stage's model/ folder in
# the artefact cache of the profile, built on demand as the lessons do.
def _stage_folders() -> dict:
    from . import artifacts

    return {
        "base": lambda profile: artifacts.pretrained_folder(profile) / "model",
        "sft": lambda profile: artifacts.sft_folder(profile) / "model",
        "rlhf-v1": lambda profile: artifacts.rejection_folder(profile, 1) / "model",
        "rlhf-v2": lambda profile: artifacts.rejection_folder(profile, 2) / "model",
    }


def _model_folder(spec: str, profile: str | None) -> Path:
    """A checkpoint folder as given, or the folder of a stage's model (base, sft, rlhf-v1, rlhf-v2 ...)."""
    import re

    from .profiles import get_profile

    path = Path(spec)
    if path.is_dir():
        return path
    stages = _stage_folders()
    name = spec.lower()
    if name in stages or re.fullmatch(r"rlhf-v[1-9]\d*", name):
        profile = get_profile(profile)
        if name in stages:
            folder = stages[name](profile)
        else:
            from . import artifacts

            folder = artifacts.rejection_folder(profile, int(name.removeprefix("rlhf-v"))) / "model"
        print(f"{spec}: the {profile.name} profile's model, {folder}", file=sys.stderr)
        return folder
    raise ValueError(
        f"{spec!r} is neither a checkpoint folder nor one of the course's models ({', '.join(stages)} ...); "
        "give a folder with params.json or config.json, or a stage name (add --profile to choose the profile)."
    )


def cmd_chat(opts: argparse.Namespace) -> int:
    from .checkpoint import TOKENIZER_FILE, load_checkpoint
    from .terminal_chat import ChatSession, run_chat
    from .tokenizer import Tokenizer

    folder = _model_folder(opts.model, opts.profile)
    if not (folder / TOKENIZER_FILE).is_file():
        raise ValueError(f"{folder} has no {TOKENIZER_FILE}, which a chat needs: copy the tokenizer the model was "
                         "trained with into the folder.")  # fmt: skip
    tokenizer = Tokenizer(folder / TOKENIZER_FILE)
    device = _device(opts.device)
    model = load_checkpoint(folder, device=device)
    if device == "cpu":
        model = model.float()  # half precision is slow and lossy on a CPU
    session = ChatSession(model.eval(), tokenizer, system=opts.system, temperature=opts.temperature, top_p=opts.top_p,
                          max_new_tokens=opts.max_new_tokens, seed=opts.seed)  # fmt: skip
    session.prompt("")  # a --system message that leaves no room is reported before the first prompt
    with contextlib.suppress(ImportError):  # line editing and history for input(), where the platform has it
        import readline  # noqa: F401
    return run_chat(session, name=opts.model)


def cmd_export(opts: argparse.Namespace) -> int:
    from .gguf_export import export_gguf, gguf_package

    try:
        gguf_package()
    except ImportError as err:  # say it before any model is built or read
        raise ValueError(str(err)) from None
    folder = _model_folder(opts.model, opts.profile)
    out = export_gguf(folder, opts.out, outtype=opts.outtype, overwrite=opts.force)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {opts.outtype}) from {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama2-minimal", description="The Llama 2 recipe at toy scale: model, checkpoints and decoding."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="write a randomly initialised checkpoint (to try the other commands)",
        description="Write a model with random weights (N(0, 0.02), as for pretraining) as a checkpoint folder.",
    )
    p.add_argument("dst", metavar="DST", help="the folder to write")
    p.add_argument(
        "--params",
        default="tiny",
        help="tiny (default, 3.15M parameters), 7B, 13B, 70B, or a params.json / config.json",
    )
    p.add_argument("--vocab-size", type=int, help="override the vocabulary size")
    p.add_argument("--layout", choices=["meta", "hf"], default="meta")
    p.add_argument("--tokenizer", help="a tokenizer.model to copy into the folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "count",
        help="count the parameters of a configuration without building it",
        description="Parameter counts by part, from the configuration alone (no weights).",
    )
    p.add_argument("spec", metavar="SPEC", help="tiny, 7B, 13B, 70B, a params.json or config.json, or a folder")
    p.add_argument("--vocab-size", type=int, help="vocabulary size when the file leaves it at -1 (default 32000)")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser(
        "convert",
        help="convert a checkpoint folder between Meta's and Hugging Face's layouts",
        description="Detect SRC's layout (Meta: params.json + consolidated.NN.pth; Hugging Face: "
        "config.json + model.safetensors) and write DST in the other one (atomically).",
    )
    p.add_argument("src", metavar="SRC", help="the checkpoint folder to read")
    p.add_argument("dst", metavar="DST", help="the folder to write (must not exist, or be empty, unless --force)")
    p.add_argument("--to", required=True, choices=["meta", "hf"], help="the layout to write")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "generate",
        help="continue a prompt with a checkpoint",
        description="Decode from a Meta or Hugging Face checkpoint folder with the KV cache.",
    )
    p.add_argument("ckpt", metavar="CKPT", help="a Meta or Hugging Face checkpoint folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", metavar="TEXT", help="text prompt (needs CKPT/tokenizer.model)")
    source.add_argument("--ids", metavar='"1 2 3"', help="prompt token ids; prints only the new ids")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in Meta's chat format ([INST] ...)")
    p.add_argument("--system", help="a system message for --chat")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, Meta's)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold (default 0.9)")
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto keeps the stored precision, but uses float32 on a CPU",
    )
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser(
        "chat",
        help="talk to a chat model in the terminal (Meta's format, streamed)",
        description="An interactive chat in Meta's format with a checkpoint folder or one of the course's models "
        "(base, sft, rlhf-v1, rlhf-v2 ...: the profile's model from the artefact cache, built if missing). The answer "
        "is printed token by token. Commands: /reset (a new dialog), /quit (or Ctrl-D); Ctrl-C stops an answer.",
    )
    p.add_argument("model", metavar="MODEL", help="a checkpoint folder (with tokenizer.model) or a stage name")
    p.add_argument("--system", help="a system message, kept across /reset")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, Meta's)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold (default 0.9)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the longest answer (default 256)")
    p.add_argument("--seed", type=int, default=None, help="make the whole dialog reproducible")
    p.add_argument("--profile", help="the profile of a stage name: ci, laptop (default) or gpu")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "export",
        help="write a model as one GGUF file for llama.cpp",
        description="Write a checkpoint folder (or a stage's model: base, sft, rlhf-v2 ...) as a GGUF file, "
        "llama.cpp's format: hyperparameters, the SentencePiece vocabulary with scores and types, Meta's chat "
        "template, the weights. Needs llama.cpp's gguf package (pip install gguf).",
    )
    p.add_argument("model", metavar="MODEL", help="a checkpoint folder (with tokenizer.model) or a stage name")
    p.add_argument("out", metavar="OUT", help="the .gguf file to write (atomically)")
    p.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="weights in float32 (default) or float16")
    p.add_argument("--profile", help="the profile of a stage name: ci, laptop (default) or gpu")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "pipeline",
        help="run every stage of the recipe on the toy world and print the results table",
        description="World, tokenizer, pretraining (cleaned and uncleaned corpus), base-model evaluation; "
        "then one results table and results.json beside the checkpoints. Stages already built are reused.",
    )
    p.add_argument("--profile", help="ci, laptop (default) or gpu; or set $LLAMA2_MINIMAL_PROFILE")
    p.add_argument("--out", help="the run folder (default: the artefact cache, $LLAMA2_MINIMAL_CACHE or "
                   "~/.cache/llama2-minimal)")  # fmt: skip
    p.add_argument("--seed", type=int, help="another seed for the world and every stage (default: "
                   "$LLAMA2_MINIMAL_SEED, else the profile's, 0); its models are cached apart, its table goes to "
                   "results-seedN.json")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser(
        "pretrain",
        help="pretrain the base model (runs under torchrun too)",
        description="Pretraining alone. Scale out with: torchrun --nproc_per_node=2 -m llama2_minimal pretrain",
    )
    p.add_argument("--profile", help="ci, laptop (default) or gpu; or set $LLAMA2_MINIMAL_PROFILE")
    p.add_argument("--out", help="the run folder (default: the artefact cache)")
    p.add_argument("--steps", type=int, help="override the profile's number of optimiser steps")
    p.add_argument("--uncleaned", action="store_true", help="train on the corpus without cleaning")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "course",
        help="keep the course's notebooks in shape (normal form, exercises, lesson outputs)",
        description="sync: put every notebook in normal form and write exercises/ from solutions/ (a learner's "
        "edited exercise is kept unless --force). check: the same without writing; exit 1 if anything would "
        "change. execute: run lessons/ in order, store their outputs, then sync.",
    )
    p.add_argument("action", choices=["sync", "check", "execute"])
    p.add_argument("lessons", nargs="*", help="with execute: only these lessons (e.g. 02 03_rotary_embeddings)")
    p.add_argument("--profile", default="laptop", help="the profile lessons run in (execute; default laptop)")
    p.add_argument("--force", action="store_true", help="overwrite exercise notebooks you have edited")
    p.set_defaults(func=cmd_course)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        return opts.func(opts)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        parser.exit(2, f"llama2-minimal {opts.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train the tiny demo causal LM shipped in ``corevital_otel/demo_model/``.

The training data is the running Python's own standard library source (``*.py``
files under ``sysconfig.get_paths()["stdlib"]``), which is present on every
machine that runs this project and is redistributable under the PSF licence.
Nothing is downloaded.

Pipeline:

1. Collect stdlib ``.py`` files (sorted, deterministic), skipping test suites,
   ``idlelib``, ``site-packages``, the generated codec tables in ``encodings``,
   ``pydoc_data`` (one huge string literal) and ``ensurepip``. Hold out every
   ``--holdout-every``-th file for evaluation.
2. Train a byte-level BPE tokenizer (``tokenizers``; trailing single spaces stay
   attached to the preceding word, see ``PRE_TOKENIZE_PATTERN``) with a single special token
   ``<|endoftext|>`` used as bos/eos/pad; wrap it as a ``PreTrainedTokenizerFast``.
3. Train a small ``GPT2LMHeadModel`` from scratch on random 256-token windows of
   the concatenated training files (files separated by ``<|endoftext|>``) with
   AdamW, linear warmup then cosine decay.  Training stops when the wall-clock
   budget (``--minutes``) is spent; the learning-rate schedule follows the
   fraction of the budget used, so the cosine always reaches its floor.  Pass
   ``--max-steps`` for a step-based (bit-for-bit repeatable) schedule instead.
4. Evaluate train/held-out loss on fixed windows, save model + tokenizer with
   ``save_pretrained(..., safe_serialization=True)`` and write
   ``training_stats.json`` next to them.

Usage (from the repository root)::

    python scripts/train_demo_model.py            # default 25 minute budget
    python scripts/train_demo_model.py --minutes 5 --out /tmp/demo_model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

EOT = "<|endoftext|>"
SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "encodings",  # mostly machine-generated codec tables
    "pydoc_data",  # one giant string literal of docs
    "ensurepip",
}

# Pre-tokenizer patterns (split before byte-level BPE), keyed by --pretokenizer.
# "code" (the default, used for the shipped model): identifiers (with "_"),
# numbers and punctuation runs each keep ONE trailing space; any other run of
# whitespace (newline + indentation included) is a piece of its own.
# "code-nl": the same, but "\n" is always a piece by itself, separate from the
# indentation after it (an experiment; NOT what the shipped model used).
PRE_TOKENIZE_PATTERNS = {
    "code": r"[\p{L}_][\p{L}\p{N}_]* ?|\p{N}+ ?|[^\s\p{L}\p{N}_]+ ?|\s+",
    "code-nl": r"[\p{L}_][\p{L}\p{N}_]* ?|\p{N}+ ?|[^\s\p{L}\p{N}_]+ ?|\n|[^\S\n]+",
}
PRE_TOKENIZE_PATTERN = PRE_TOKENIZE_PATTERNS["code"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "corevital_otel" / "demo_model"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def collect_stdlib_files(max_bytes: int) -> tuple[str, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                files.append(Path(dirpath) / name)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    kept, total = [], 0
    for path in files:
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        kept.append(path)
        total += size
    return str(root), kept


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(texts: list[str], vocab_size: int, max_len: int, style: str = "code"):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style in PRE_TOKENIZE_PATTERNS:
        # Unlike GPT-2 (which glues a space to the *start* of the next word), a
        # single trailing space stays with the preceding identifier / number /
        # punctuation run, so code prompts such as "def ", "class " or "    return "
        # end on a token boundary the model has seen in training.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRE_TOKENIZE_PATTERNS[style]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # "gpt2": the stock GPT-2 byte-level regex
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.append(eot_id)
        ids.extend(enc.ids)
    ids.append(eot_id)
    return torch.tensor(ids, dtype=torch.long)


def fixed_windows(data: torch.Tensor, ctx: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - ctx - 1, (n,), generator=g)
    return torch.stack([data[s : s + ctx] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = []
    for i in range(0, len(windows), batch_size):
        x = windows[i : i + batch_size]
        losses.append(model(input_ids=x, labels=x).loss.item() * len(x))
    model.train()
    return sum(losses) / len(windows)


def lr_at(progress: float, step: int, args) -> float:
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * progress))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--minutes", type=float, default=25.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=0, help="if >0, step-based schedule/stop instead of time")
    p.add_argument("--max-bytes", type=int, default=12_000_000, help="cap on stdlib source bytes used")
    p.add_argument("--holdout-every", type=int, default=40, help="every Nth file is held out")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--n-embd", type=int, default=160)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--llama-ffn", type=int, default=0, help="llama MLP width (0: ~8/3 * hidden)")
    p.add_argument("--pretokenizer", choices=["code", "code-nl", "gpt2"], default="code")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-windows", type=int, default=256)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    stdlib_root, files = collect_stdlib_files(args.max_bytes)
    train_files = [f for i, f in enumerate(files) if i % args.holdout_every != args.holdout_every - 1]
    eval_files = [f for i, f in enumerate(files) if i % args.holdout_every == args.holdout_every - 1]
    train_texts = [read_text(f) for f in train_files]
    eval_texts = [read_text(f) for f in eval_files]
    total_bytes = sum(f.stat().st_size for f in files)
    log(
        f"stdlib {stdlib_root}: {len(files)} files, {total_bytes:,} bytes "
        f"({len(train_files)} train / {len(eval_files)} held-out)"
    )

    tokenizer = train_tokenizer(train_texts, args.vocab_size, args.ctx, args.pretokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    log(f"tokenizer: vocab {len(tokenizer)}, {EOT} id {eot_id} ({time.time() - t0:.0f}s)")

    train_data = encode_corpus(tokenizer, train_texts)
    eval_data = encode_corpus(tokenizer, eval_texts)
    log(
        f"tokens: train {len(train_data):,}, held-out {len(eval_data):,} "
        f"({sum(map(len, train_texts)) / len(train_data):.2f} chars/token)"
    )
    eval_windows = fixed_windows(eval_data, args.ctx, args.eval_windows, args.seed + 1)
    train_eval_windows = fixed_windows(train_data, args.ctx, args.eval_windows, args.seed + 2)

    special = dict(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id, tie_word_embeddings=True)
    if args.arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.n_embd,
            intermediate_size=args.llama_ffn or 64 * round(8 * args.n_embd / 3 / 64),
            num_hidden_layers=args.n_layer,
            num_attention_heads=args.n_head,
            num_key_value_heads=args.n_head,
            max_position_embeddings=args.ctx,
            rope_theta=10000.0,
            attention_dropout=0.0,
            **special,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=args.ctx,
            n_embd=args.n_embd,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_inner=4 * args.n_embd,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
        model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    shape = f"{args.n_layer}L/{args.n_embd}d/{args.n_head}h ctx {args.ctx}"
    log(f"model: {args.arch} {shape}, {n_params:,} params")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    g = torch.Generator().manual_seed(args.seed)
    budget_s = args.minutes * 60.0
    model.train()
    step, tokens_seen, running = 0, 0, []
    history = []
    t_train = time.time()
    while True:
        elapsed = time.time() - t_train
        if args.max_steps > 0:
            if step >= args.max_steps:
                break
            progress = step / args.max_steps
        else:
            if elapsed >= budget_s:
                break
            progress = elapsed / budget_s
        lr = lr_at(progress, step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train_data) - args.ctx - 1, (args.batch_size,), generator=g)
        x = torch.stack([train_data[s : s + args.ctx] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        running.append(loss.item())
        if step % args.log_every == 0:
            avg = sum(running[-args.log_every :]) / len(running[-args.log_every :])
            el = time.time() - t_train
            history.append({"step": step, "minutes": round(el / 60, 2), "loss": round(avg, 4), "lr": lr})
            log(
                f"step {step:5d}  loss {avg:.4f}  lr {lr:.2e}  tokens {tokens_seen:,}  "
                f"{el / 60:.1f} min  {tokens_seen / el:.0f} tok/s"
            )
    train_minutes = (time.time() - t_train) / 60
    last = running[-50:] or [float("nan")]
    final_running = sum(last) / len(last)
    log(f"training done: {step} steps, {tokens_seen:,} tokens, {train_minutes:.1f} min")

    train_loss = evaluate(model, train_eval_windows, args.batch_size)
    eval_loss = evaluate(model, eval_windows, args.batch_size)
    # tokenizer-independent view: nats per character of the predicted held-out text
    eval_chars = sum(len(tokenizer.decode(w[1:])) for w in eval_windows)
    eval_nats_per_char = eval_loss * eval_windows[:, 1:].numel() / eval_chars
    log(
        f"final loss: train {train_loss:.4f}  held-out {eval_loss:.4f} (ppl {math.exp(eval_loss):.1f}, "
        f"{eval_nats_per_char:.4f} nats/char)"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        # No max_length: set here, every generate(max_new_tokens=...) prints transformers' warning that
        # both are set; the context limit is the config's n_positions.
        do_sample=False,
    )
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    # transformers 5 writes "TokenizersBackend"; the generic fast class name also
    # loads with transformers 4.x AutoTokenizer (and maps to the same class in 5.x).
    tok_cfg_path = args.out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    stats = {
        "command": " ".join(["python", "scripts/train_demo_model.py", *sys.argv[1:]]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stdlib_root": stdlib_root,
        "files": len(files),
        "train_files": len(train_files),
        "heldout_files": len(eval_files),
        "bytes": total_bytes,
        "train_tokens_corpus": len(train_data),
        "heldout_tokens_corpus": len(eval_data),
        "params": n_params,
        "steps": step,
        "tokens_seen": tokens_seen,
        "epochs": round(tokens_seen / len(train_data), 3),
        "train_minutes": round(train_minutes, 2),
        "total_minutes": round((time.time() - t0) / 60, 2),
        "final_running_train_loss": round(final_running, 4),
        "final_train_loss": round(train_loss, 4),
        "final_heldout_loss": round(eval_loss, 4),
        "final_heldout_nats_per_char": round(eval_nats_per_char, 4),
        "safetensors_bytes": (args.out / "model.safetensors").stat().st_size,
        "loss_history": history,
    }
    (args.out / "training_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log(f"saved to {args.out} (model.safetensors {stats['safetensors_bytes'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

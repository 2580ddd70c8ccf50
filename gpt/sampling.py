"""The sampling jobs: sample.py (load a checkpoint and stream generated text to stdout, or draw where one
attention head looks over the prompt) and chat.py (answer questions with a fine-tuned model)."""

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from gpt.core.checkpoint import LANGUAGE_MODELS, load_model
from gpt.core.device import pick_device
from gpt.core.errors import UserError
from gpt.core.runs import latest_or_refuse
from gpt.posttrain.qa import STOP, QAPair


def read_prompt(cfg: DictConfig) -> str:
    if cfg.prompt is not None and cfg.prompt_file is not None:
        raise UserError("give either prompt=... or prompt_file=..., not both")
    if cfg.prompt_file is None:
        return cfg.prompt or ""
    try:
        return Path(cfg.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read prompt_file={cfg.prompt_file}: {err}") from None


def save_attention_map(model, tokenizer, prompt_ids: list[int], path: str, layer: int, head: int) -> None:
    """Save a heat map of one layer's head over the prompt as a PNG: row t is where position t looks."""
    n_layer = len(getattr(model, "blocks", ()))
    if not n_layer:
        raise UserError("this model has no attention layers to draw (a bigram or n_layer=0 model)")
    if not 0 <= layer < n_layer:
        raise UserError(f"layer={layer} does not exist: this model has layers 0 to {n_layer - 1}")
    if len(prompt_ids) > model.block_size:
        raise UserError(f"the prompt has {len(prompt_ids)} characters, the model sees {model.block_size}: shorten it")
    maps = model.attention_maps(torch.tensor([prompt_ids], device=next(model.parameters()).device))
    if not 0 <= head < len(maps[layer]):
        raise UserError(f"head={head} does not exist: layer {layer} has heads 0 to {len(maps[layer]) - 1}")

    # Imported only for this, and without pyplot: no GUI backend, no global figure state.
    from matplotlib.figure import Figure

    chars = [{" ": "␣", "\n": "\\n"}.get(c, c) for c in map(tokenizer.decode, ([i] for i in prompt_ids))]
    size = min(2 + 0.25 * len(chars), 16)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(maps[layer][head].cpu(), cmap="viridis", vmin=0)
    ticks = range(len(chars))
    ax.set_xticks(ticks, chars, fontsize=8)
    ax.set_yticks(ticks, chars, fontsize=8)
    ax.set_xlabel("the character looked at (key)")
    ax.set_ylabel("the character looking (query)")
    ax.set_title(f"layer {layer}, head {head}: row t is where position t looks", fontsize=10)
    fig.colorbar(image, label="attention weight")
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise UserError(f"cannot write attention_png={path}: {err}") from None
    print(f"attention of layer {layer}, head {head} over {len(chars)} characters: {path}")


def check_sampling(cfg: DictConfig) -> None:
    """The sampling settings sample.py and chat.py share, each refused in one line when it cannot work."""
    if cfg.temperature < 0:
        raise UserError(f"temperature={cfg.temperature} must be > 0 (or 0 for greedy decoding)")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"top_k={cfg.top_k} must be >= 1 (or null for no cut-off)")
    for key in ("max_new_tokens", "num_samples"):
        if key in cfg and cfg[key] < 1:
            raise UserError(f"{key}={cfg[key]} must be >= 1")


def sample(cfg: DictConfig) -> None:
    if cfg.ckpt is None:
        raise UserError("which checkpoint? python sample.py ckpt=outputs/<date>/<time>/checkpoints/best.ckpt")
    check_sampling(cfg)
    device = pick_device(cfg.device)
    model, tokenizer = load_model(cfg.ckpt, device, kinds=LANGUAGE_MODELS, job="sample.py")
    prompt = read_prompt(cfg)
    start = tokenizer.prompt_ids(prompt)  # unknown characters fail here, naming them
    if cfg.attention_png is not None:
        if not prompt:
            raise UserError("attention_png draws attention over a prompt: give prompt=... or prompt_file=...")
        save_attention_map(model, tokenizer, start, cfg.attention_png, cfg.layer, cfg.head)
        return
    torch.manual_seed(cfg.seed)  # here, not only in the job scaffold: sample() alone is reproducible too
    if cfg.num_samples == 1:  # streamed, a character as soon as it is drawn
        decode = tokenizer.stream_decoder()  # a byte-level model's characters may take several tokens
        sys.stdout.write(decode(start))
        idx = torch.tensor([start], device=device)
        for token in model.generate_stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k):
            sys.stdout.write(decode(token[0].tolist()))
            sys.stdout.flush()
        print()
        return
    # Several samples are drawn together, as one batch: a step of 8 rows costs about what a step of one does.
    idx = torch.tensor([start] * cfg.num_samples, device=device)
    rows = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k)
    print(("\n" + "-" * 40 + "\n").join(tokenizer.decode(row) for row in rows.tolist()))


# the kinds that answer questions; without ckpt=, the latest PPO model, else GRPO, DPO, SFT
CHAT_MODELS = ("ppo", "grpo", "dpo", "sft")


def chat(cfg: DictConfig) -> None:
    """Answer one question per line of standard input with a fine-tuned model, each answer streamed as it is
    sampled and ended by the stop character. From a terminal a prompt is shown before each question; piped,
    each answer is one line of output (an empty one where the question could not be asked)."""
    check_sampling(cfg)
    path = cfg.ckpt or latest_or_refuse(CHAT_MODELS, "chat.py ckpt=")
    device = pick_device(cfg.device)
    model, tokenizer = load_model(path, device, kinds=CHAT_MODELS, job="chat.py")
    stop = tokenizer.stoi[STOP]
    terminal = sys.stdin.isatty()
    if terminal:
        print(f"{path}: one question per line, Ctrl-D to end", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    while (question := read_question(terminal)) is not None:
        try:
            idx = torch.tensor([tokenizer.encode(QAPair(question, "").prompt)], device=device)
        except UserError as err:  # an unknown character: say so, and go on with the next question
            print(f"error: {err}", file=sys.stderr)
            print()
            continue
        for token in model.generate_stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k):
            if token.item() == stop:
                break
            sys.stdout.write(tokenizer.decode(token[0].tolist()))
            sys.stdout.flush()
        print()


def read_question(terminal: bool) -> str | None:
    """The next question (without its newline), or None at the end of the input."""
    if terminal:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None

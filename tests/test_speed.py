import lightning as L
import pytest
import torch

from gpt.core.checkpoint import load_model
from gpt.core.model import GPT, GPTConfig
from gpt.pretrain.data import RandomBatches
from gpt.pretrain.lightning_module import GPTModule

VOCAB = [chr(c) for c in range(97, 117)]
MODEL = dict(arch="gpt", block_size=16, n_layer=2, n_head=2, n_embd=32)
OPTIM = dict(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99], warmup_steps=0, decay_steps=10, min_lr=1e-4)


@pytest.mark.parametrize("mixer", ["attention", "average"])
def test_kv_cache_gives_the_logits_of_a_full_forward_pass(mixer):
    model = GPT(GPTConfig(20, block_size=16, n_layer=2, n_head=2, n_embd=32, mixer=mixer)).eval()
    idx = torch.randint(20, (3, 16))
    full, _ = model(idx)
    cache = model.new_cache()
    pieces = [model(idx[:, :5], cache=cache)[0]]  # a prompt, then one token at a time
    pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 16)]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


@pytest.mark.parametrize("prompt_length", [1, 7, 20])  # 20 > block_size: starts past the cache's reach
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_k": 5}, {"temperature": 0}])
def test_cached_sampling_draws_exactly_the_uncached_characters(prompt_length, sampling):
    torch.manual_seed(prompt_length)
    model = GPT(GPTConfig(20, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    prompt = torch.randint(20, (2, prompt_length))
    # 40 new tokens: the sequence outgrows block_size, where the cached path switches to re-computing the window.
    outputs = [
        model.generate(prompt, 40, generator=torch.Generator().manual_seed(7), use_cache=use_cache, **sampling)
        for use_cache in (True, False)
    ]
    assert torch.equal(*outputs)


def test_cached_sampling_feeds_one_position_per_token_while_the_context_fits():
    model = GPT(GPTConfig(20, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    fed = []
    model.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    model.generate(torch.zeros((1, 4), dtype=torch.long), 20)
    # The 4-token prompt once, one token each up to 16, then the whole 16-token window per step beyond it.
    assert fed == [4] + [1] * 12 + [16] * 7


def test_on_device_batches_are_shifted_chunks_of_the_data_on_its_device():
    data = torch.arange(1000)
    for _, (x, y) in zip(range(3), RandomBatches(data, block_size=8, batch_size=5, seed=(0, 0))):
        assert x.shape == y.shape == (5, 8) and x.device == data.device
        assert torch.equal(y[:, :-1], x[:, 1:])  # the target is the next token
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 7, dtype=torch.long))  # consecutive tokens
        assert x.min() >= 0 and y.max() < 1000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batches_cut_on_the_gpu_are_the_batches_of_the_cpu():
    """A GPU run resumed on a CPU (or the other way) goes on with the same batches."""
    data = torch.arange(1000)
    for (x, y), (cpu_x, cpu_y) in zip(
        RandomBatches(data.cuda(), block_size=8, batch_size=5, seed=(0, 0), start=3),
        RandomBatches(data, block_size=8, batch_size=5, seed=(0, 0), start=3),
    ):
        assert x.is_cuda and y.is_cuda
        assert torch.equal(x.cpu(), cpu_x) and torch.equal(y.cpu(), cpu_y)
        break


def train_briefly(module: GPTModule, path) -> None:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=RandomBatches(torch.randint(20, (500,)), 16, 4, seed=0))
    trainer.save_checkpoint(path)


def test_checkpoints_load_whether_or_not_the_model_was_compiled(tmp_path, monkeypatch):
    compiled_calls, real_compile = [], torch.compile

    def compile_for_test(fn):  # the real torch.compile minus code generation, which takes ~20 s on a CPU
        compiled_calls.append(fn)
        return real_compile(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_for_test)
    x = torch.randint(20, (2, 16))
    for compiled in (True, False):
        module = GPTModule(MODEL, OPTIM, VOCAB, compile=compiled)
        train_briefly(module, tmp_path / f"{compiled}.ckpt")
        model, _ = load_model(tmp_path / f"{compiled}.ckpt")  # the eager model, as sample.py builds it
        torch.testing.assert_close(model(x)[0], module.model.eval()(x)[0])
        other = GPTModule(MODEL, OPTIM, VOCAB, compile=not compiled)  # and into a module compiled the other way
        other.load_state_dict(module.state_dict())
        torch.testing.assert_close(other.train_forward(x)[0], module.model(x)[0])
    assert len(compiled_calls) == 2

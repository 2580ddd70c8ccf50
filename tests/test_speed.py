import lightning as L
import pytest
import torch

from gpt.core.checkpoint import load_model
from gpt.pretrain.data import RandomBatches
from gpt.pretrain.lightning_module import GPTModule

VOCAB = [chr(c) for c in range(97, 117)]
MODEL = dict(arch="gpt", block_size=16, n_layer=2, n_head=2, n_embd=32)
OPTIM = dict(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99], warmup_steps=0, decay_steps=10, min_lr=1e-4)


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

"""The console's progress bar, for every job that trains (train.py, finetune.py)."""

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, for a run counted in steps: one bar, "step" instead of "Epoch 0" (there are no
    epochs), showing what the module logs to it (train.py: the train loss, the last val loss and tokens/s);
    validation draws no bars of its own."""

    @property
    def train_description(self) -> str:
        return "step"

    def on_train_epoch_start(self, trainer, *args):  # Lightning's, without its "Epoch N" description
        self.train_progress_bar.reset(convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer, pl_module):
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}

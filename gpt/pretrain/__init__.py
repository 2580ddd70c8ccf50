"""Pre-training: the data, the LightningModule and its callbacks, the training job, tracking, plots, the ladder.
Imports gpt.core."""

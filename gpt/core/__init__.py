"""What every stage stands on: the models, the tokenizer, checkpoints, errors, the Trainer, reports.
Imports nothing else of gpt."""

"""What every stage stands on: the models, the corpus, the tokenizer, checkpoints, the LightningModules' base,
errors, the Trainer, reports.
Imports nothing else of gpt."""

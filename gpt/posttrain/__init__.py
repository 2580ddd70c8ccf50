"""After pre-training: Q/A data, SFT, the reward model, PPO, evaluation.
Imports gpt.core, never gpt.pretrain or a job file."""

"""After pre-training: Q/A data, SFT, the reward model, PPO, evaluation.
Imports gpt.core and gpt.pretrain's data, never a job file."""

"""The `tfpg` command and its pipeline: options, jobs, model sources, devices,
pre-training, evaluation, checkpoints and resume, the reward-model command."""

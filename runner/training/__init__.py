"""LoRA fine-tuning: the training job and the child process that trains."""

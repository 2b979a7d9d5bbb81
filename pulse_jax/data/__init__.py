"""Training and evaluation data: tokenizer, llava_v1 conversations, anyres image preprocessing, tasks, grain pipeline."""

"""What a Hugging Face directory carries beside the weights: tokenizer, chat template, model card."""

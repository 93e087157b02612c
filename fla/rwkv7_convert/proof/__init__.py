"""The proof: the reference forward, fla runtime and loading, and the verdict on the converted logits."""

"""The proof by logits: the float64 reference, the two files read and checked, fla's side streamed beside it (run
through runtime/), the verdict and the report."""

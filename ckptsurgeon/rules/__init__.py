"""Values for fresh tensors: BERT's rules, the model's own, and the names of what the model drew."""

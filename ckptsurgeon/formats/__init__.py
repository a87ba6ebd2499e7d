"""Reading checkpoints: one module per format, and open_checkpoint that recognises them."""

"""One run: stream a plan into DEST (executor, safetensors writer) and publish it."""

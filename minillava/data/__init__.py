"""Data: formats -> Conversation -> token ids, labels and image slots -> batches."""

"""The unified Mixture-of-Transformers model, attention backends, embeddings and latent codecs."""

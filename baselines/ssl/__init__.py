"""Self-supervised representation learning (METHODS.md, "Self-supervised"): dim, cpc, simclr,
moco on the shared ResNet encoder, mae on a small ViT. Importing this package registers them."""

"""SAM 2 / SAM 2.1 image models (Hiera trunk, FPN neck, SAM 2 mask decoder): our own code,
loaded from the official checkpoints, running on the hosts' torch (>= 2.1)."""

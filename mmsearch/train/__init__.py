"""Training: loop, splits, loss for 1..N processes, feature cache, augmentation, unfreezing."""

"""Offline datasets: Fashion-MNIST from Debian IDX files, Debian package descriptions."""

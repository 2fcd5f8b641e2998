"""Models: the CIFAR zoo, feature taps and loading."""

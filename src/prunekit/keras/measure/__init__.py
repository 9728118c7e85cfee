"""What a Keras model costs: parameters, nonzeros, MACs, latency, peak memory, weights-file size."""

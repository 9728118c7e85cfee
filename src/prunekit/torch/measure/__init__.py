"""What a model costs: parameters, nonzeros, MACs, latency, peak memory, serialized size."""

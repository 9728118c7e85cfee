"""How channel labels flow through each traced operation: layers with weights, pointwise, shape and recurrent ops."""

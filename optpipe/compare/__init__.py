"""Golden data, parity, task accuracy on labelled data, and the gates that judge each output by what it means."""

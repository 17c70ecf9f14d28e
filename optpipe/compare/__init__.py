"""Golden data, parity and the gates that judge each output by what it means."""

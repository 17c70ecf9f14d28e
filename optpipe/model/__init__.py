"""From a user's model spec and input options to a module, its example inputs and default axes."""

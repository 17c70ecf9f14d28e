"""Build matrices: config files, the models they name, and the executors (in process, Ray) that build them."""

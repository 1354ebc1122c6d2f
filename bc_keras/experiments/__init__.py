"""One module per experiment (`cnn`, `transfer`, `simclr`), each with `run(config)`, on the
shared run skeleton of `common`."""

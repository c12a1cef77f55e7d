"""The application verbs of the `diffprior` command, one module each, all with the same shape: PARSER (the
keyword arguments of its argparse sub-parser: help, description), add_arguments(parser) and run(args).
They use the library below them (solvers, models, tasks, ...); nothing in the library imports them."""

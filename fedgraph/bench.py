"""Benchmarks (placeholder until written)."""


def add_arguments(parser):
    pass


def main(args):
    pass

"""`python -m hskstore ...` (and `torchrun -m hskstore ...`): the same command line as `hskstore`."""

from .cli import main

if __name__ == "__main__":
    main()

"""`python -m diffma_cli ...` behaves exactly like `diffma ...`."""

from diffma_cli.cli import main

if __name__ == "__main__":
    main()

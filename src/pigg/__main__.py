"""`python -m pigg ...`, which is how torchrun and accelerate launch start pigg's training processes."""

from pigg.cli import main

main()

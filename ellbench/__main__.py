from ellbench.cli import main

main()

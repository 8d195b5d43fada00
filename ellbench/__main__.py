from ellbench.cli import main

if __name__ == "__main__":  # spawned worker processes import this module: they must not run the CLI again
    main()

from cytobench.train import main

main()

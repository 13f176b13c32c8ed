from fedgraph.cli import main

main()

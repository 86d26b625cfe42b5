from nexios.cli import main

main()

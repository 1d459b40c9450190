from aiassist.cli import main

main()

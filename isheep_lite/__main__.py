from isheep_lite.cli import main

main()

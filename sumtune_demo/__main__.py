from sumtune_demo.build import main

main()

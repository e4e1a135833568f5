from penn.run import main

main()

from customer_patch.cli import main

main()

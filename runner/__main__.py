from runner.supervisor import main

if __name__ == "__main__":
    main()

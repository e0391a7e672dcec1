from memos_lab.cli import main

main()

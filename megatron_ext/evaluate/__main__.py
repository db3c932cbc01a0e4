from megatron_ext.evaluate.cli import main

main()

from megatron_ext.export.cli import main

main()

"""`python -m model_server_client`: the `model-server` command line."""
import sys

from model_server_client.cli import main

sys.exit(main())

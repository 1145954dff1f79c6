"""`python -m app`: serve the model server (app/server/launch.py)."""
from app.server.launch import main

main()

"""The HTTP server around the app: uvicorn with a bounded httptools protocol (protocol.py), started by
`python -m app` (launch.py) from the settings, the same way in `make serve`, the Dockerfile and Compose."""

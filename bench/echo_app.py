"""The framework's ceiling: the same routes and body parsing as the model server, a constant answer.

Run as `uvicorn bench.echo_app:app`; bench.serving compares the real server against it.
"""
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

CONSTANT = {"model": "echo", "label": "0", "score": 1.0, "top": [{"label": "0", "score": 1.0}]}

app = FastAPI(title="echo")


async def read_body(request: Request) -> None:
    """Receive the upload exactly as the real server must: parse the form or the JSON."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        await form["file"].read()
        await form.close()
    elif content_type.startswith("application/json"):
        await request.json()
    else:
        await request.body()


@app.post("/v1/{task}/predict")
async def predict(task: str, request: Request) -> JSONResponse:
    await read_body(request)
    return JSONResponse(CONSTANT)


@app.get("/readyz")
async def readyz() -> dict:
    return {"status": "ready"}

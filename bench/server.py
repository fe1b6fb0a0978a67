"""The gateway under gunicorn, plus the bare endpoint benchmark (a) compares it with.

    python bench/server.py PROFILE.json --port 8123 --workers 2     # settings from GATEWAY_*

POST /bench/score takes the same body as /v1/personalize and ranks the candidates with the same
scorer, rules and profile (read once from PROFILE.json, the events the benchmark stored for its
subject), but with no client check, consent, registration, minimization, storage read or audit.
It exists only in this benchmark server, never in the gateway.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from flask import request

from gateway import create_app, policies, scoring
from gateway.serve import ensure_metrics_folder, serve


def load_profile(path: str) -> scoring.Profile:
    with open(path) as file:
        events = json.load(file)
    return scoring.Profile.of_events(
        tuple(
            scoring.ProfileEvent(
                e["type"], e["item_id"], e["category"], datetime.fromisoformat(e["at"])
            )
            for e in events
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ensure_metrics_folder(args.workers)
    app = create_app({"RATELIMIT_ENABLED": False})
    profile = load_profile(args.profile)
    with app.app_context():
        rules = policies().purposes["recommendations"].scoring

    @app.post("/bench/score")
    def bare_score() -> dict[str, Any]:
        body = request.get_json()
        candidates = [scoring.Candidate(**c) for c in body["candidates"]]
        limit = body.get("limit", len(candidates))
        ranking = scoring.rank(candidates, profile, rules, now=datetime.now(UTC), limit=limit)
        return {"items": [{"id": i.id, "score": i.score} for i in ranking.items]}

    serve(app, host="127.0.0.1", port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()

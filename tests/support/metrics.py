"""Comparing runs' metrics: everything but the wall-clock timings must match."""


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]

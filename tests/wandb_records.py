"""Read a W&B offline run file (``run-*.wandb``) back: its history rows and summary.

The file is W&B's header (":W&B", 2 magic bytes, a version byte) followed by LevelDB-log
records (32 KiB blocks; each record a 7-byte header of checksum, length, type: full, or
first/middle/last fragments) holding ``wandb_internal_pb2.Record`` messages."""

from __future__ import annotations

from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes]:
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            buf = chunk
        elif kind == MIDDLE:
            buf += chunk
        elif kind == LAST:
            out.append(buf + chunk)
            buf = b""
    return out


def read_run(path: Path) -> tuple[list[dict], dict]:
    """(history rows, final summary) of one offline run file; values JSON-decoded."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    history, summary = [], {}
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                            for i in record.history.item})
        elif kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                            for i in record.summary.update})
    return history, summary

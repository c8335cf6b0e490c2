#!/usr/bin/env python3
"""Reads every record of a Kafka topic and counts its distinct `wsedge-id`
headers: the check `wsbench durable --kafka-ids-python PY` runs on each
Kafka sink before it stops the broker (wsbench itself counts records from
the record-batch headers and cannot see the ids: wsedge's producer
compresses with zstd). Prints one JSON line:

    {"records": N, "distinct": N, "duplicates": N, "no_id": N, "partitions": {..}}

Needs confluent-kafka (librdkafka in the wheel), e.g.

    python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install confluent-kafka
    bench/kafka-ids.py 127.0.0.1:9092 bench-kf 3      # with /tmp/kvenv/bin/python

Partitions are read with assign() from offset 0 (no consumer group: the
first group join takes ~23 s on tansu) until 3 s pass without a record.
"""
import collections
import json
import sys

from confluent_kafka import Consumer, TopicPartition


def main():
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "wsbench-kafka-ids",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    ids = collections.Counter()
    per_partition = collections.Counter()
    records = no_id = idle = 0
    while idle < 15:
        msgs = c.consume(1000, timeout=0.2)
        if not msgs:
            idle += 1
            continue
        idle = 0
        for m in msgs:
            if m.error():
                print(f"kafka-ids.py: {m.error()}", file=sys.stderr)
                continue
            records += 1
            per_partition[m.partition()] += 1
            h = dict(m.headers() or [])
            i = h.get("wsedge-id")
            if i is None:
                no_id += 1
            else:
                ids[i] += 1
    c.close()
    print(json.dumps({
        "records": records,
        "distinct": len(ids),
        "duplicates": sum(n - 1 for n in ids.values()),
        "no_id": no_id,
        "partitions": {str(p): n for p, n in sorted(per_partition.items())},
    }))


if __name__ == "__main__":
    main()

"""Streams QoS 1 events to the nsready MQTT listener with paho-mqtt 2.x and a persistent
session (clean_session=False), reconnecting on its own, and appends the index of every
event the server acknowledged (PUBACK) to OUT, one per line, as the acks come.

usage: paho_stream.py PORT N OUT BASE_EVENT_JSON WAIT_SECS
"""

import datetime
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

port, n, out, base, wait = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    sys.argv[3],
    json.loads(sys.argv[4]),
    float(sys.argv[5]),
)
# Our lock is never held while calling into paho: paho calls on_publish with its own
# message mutex held, so holding `lock` around c.publish() would deadlock the two threads.
# An ack that arrives before publish() returned its mid waits in early_acks.
lock = threading.Lock()
mid_to_i = {}
early_acks = set()
acked = set()
f = open(out, "a", encoding="utf-8")


def record(i):
    if i not in acked:
        acked.add(i)
        f.write(f"{i}\n")
        f.flush()


def on_publish(client, userdata, mid, reason_code, properties):
    with lock:
        i = mid_to_i.get(mid)
        if i is None:
            early_acks.add(mid)
        else:
            record(i)


c = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id="paho-kill9",
    clean_session=False,
    protocol=mqtt.MQTTv311,
)
c.max_inflight_messages_set(20)
c.max_queued_messages_set(0)
c.reconnect_delay_set(0.2, 1)
c.on_publish = on_publish
c.connect("127.0.0.1", port, keepalive=5)
c.loop_start()
t0 = datetime.datetime(2025, 11, 14, 12, 0, 0, tzinfo=datetime.timezone.utc)
for i in range(n):
    ev = dict(base)
    ev["source_timestamp"] = (t0 + datetime.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = c.publish("nsready/ingest", json.dumps(ev), qos=1)
    with lock:
        mid_to_i[info.mid] = i
        if info.mid in early_acks:
            early_acks.discard(info.mid)
            record(i)
    time.sleep(0.004)
deadline = time.time() + wait
while time.time() < deadline:
    with lock:
        if len(acked) >= n:
            break
    time.sleep(0.1)
c.loop_stop()
f.close()
print(len(acked))

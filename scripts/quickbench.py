#!/usr/bin/env python3
"""First, rough throughput check against a running nsready (stdlib only).

usage: quickbench.py PORT THREADS REQUESTS_PER_THREAD EVENTS_PER_REQUEST batch|single [nowait]
Needs the demo registry (`nsready registry demo`). Posts 3-metric events, waits until
/v1/health says queue_depth 0, prints accepted/s and committed events/s (rows = 3 x events).
The client is Python (GIL-bound): single-event figures measure the client more than nsready.
A proper loadgen and scripts/bench are issue 5.
"""
import json, sys, time, threading, urllib.request, sqlite3, datetime
port=int(sys.argv[1]); threads=int(sys.argv[2]); reqs=int(sys.argv[3]); per=int(sys.argv[4]); mode=sys.argv[5]
P="8212caa2-b928-4213-b64e-9f5b86f4cad1"; S="89a66770-bdcc-4c95-ac97-e1829cb7a960"
DEVS=["bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","40000000-0000-4000-8000-000000000102"]
# A fresh base time per run: identical events would be dropped as client retries
# inside the duplicate window.
base=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
def ev(i):
    return {"project_id":P,"site_id":S,"device_id":DEVS[i%2],"protocol":"GPRS",
      "source_timestamp":(base+datetime.timedelta(seconds=i//2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "metrics":[{"parameter_key":f"project:{P}:{k}","value":float(i%200),"quality":192} for k in ("voltage","current","power")]}
acc=[0]; lock=threading.Lock(); lat=[]
def run(t):
    for r in range(reqs):
        start=(t*reqs+r)*per
        if mode=="batch":
            body=json.dumps([ev(start+k) for k in range(per)]).encode()
            url=f"http://127.0.0.1:{port}/v1/ingest/batch"
        else:
            body=json.dumps(ev(start)).encode(); url=f"http://127.0.0.1:{port}/v1/ingest"
        q=urllib.request.Request(url,data=body,headers={"content-type":"application/json"})
        t0=time.time()
        with urllib.request.urlopen(q) as resp:
            d=json.loads(resp.read())
        with lock:
            lat.append(time.time()-t0)
            acc[0]+= d.get("accepted",1) if mode=="batch" else 1
t0=time.time()
ts=[threading.Thread(target=run,args=(i,)) for i in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
t1=time.time()
while len(sys.argv) < 7 or sys.argv[6] != "nowait":
    h=json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health").read())
    if h["queue_depth"]==0: break
    time.sleep(0.05)
t2=time.time()
lat.sort()
print(json.dumps({"mode":mode,"accepted_events":acc[0],"ingest_secs":round(t1-t0,2),"accepted_per_s":round(acc[0]/(t1-t0)),
  "until_committed_secs":round(t2-t0,2),"committed_events_per_s":round(acc[0]/(t2-t0)),"rows_per_s":round(3*acc[0]/(t2-t0)),
  "req_p50_ms":round(lat[len(lat)//2]*1000,1),"req_p99_ms":round(lat[int(len(lat)*0.99)]*1000,1)}))

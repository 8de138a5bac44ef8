#!/usr/bin/env python3
# Hand-run A/B of the embedded store's SQLite costs (issue 13): builds the platform schema from
# the migration in /tmp/sqlvar.db (102 devices, 3 templates), upserts N rows of the loadgen
# shape with the store's statement and prints rows/s and CPU per row. Not part of CI.
# Usage: [TX=rows per commit] [CK=wal_autocheckpoint pages] [PS=page size] \
#        scripts/sqlite-variants.py full|nofk|nosecidx|ascidx|nocreated|plaininsert|bigcache|ckpt10k [N]
import sqlite3, os, time, sys, uuid, datetime, resource
MIG=open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src/store/migrations/sqlite/0001_platform_schema.sql')).read()
N=int(sys.argv[2]) if len(sys.argv)>2 else 300000
variant=sys.argv[1]
path='/tmp/sqlvar.db'
for s in ['','-wal','-shm']:
    try: os.remove(path+s)
    except FileNotFoundError: pass
c=sqlite3.connect(path, isolation_level=None)
if os.environ.get('PS'): c.execute('PRAGMA page_size=%s'%os.environ['PS'])
if os.environ.get('CK'): c.execute('PRAGMA wal_autocheckpoint=%s'%os.environ['CK'])
c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=NORMAL'); c.execute('PRAGMA cache_size=-65536')
mig=MIG
if variant=='nosecidx':
    mig=mig.replace('CREATE INDEX ingest_events_device_param_time_idx\n    ON ingest_events (device_id, parameter_key, time DESC);','')
if variant=='ascidx':
    mig=mig.replace('ON ingest_events (device_id, parameter_key, time DESC);','ON ingest_events (device_id, parameter_key, time);')
if variant=='rowid':
    mig=mig.replace(') WITHOUT ROWID;\nCREATE INDEX ingest_events_device',');\nCREATE INDEX ingest_events_device')
if variant=='bigcache':
    c.execute('PRAGMA cache_size=-1048576')
if variant=='ckpt10k':
    c.execute('PRAGMA wal_autocheckpoint=10000')
if variant=='nocreated':
    mig=mig.replace("""    attributes    TEXT DEFAULT '{}' CHECK (attributes IS NULL OR json_valid(attributes)),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),""","""    attributes    TEXT DEFAULT '{}' CHECK (attributes IS NULL OR json_valid(attributes)),""")
c.executescript(mig)
if variant!='nofk': c.execute('PRAGMA foreign_keys=ON')
cid=str(uuid.uuid4()); pid=str(uuid.uuid4()); sid=str(uuid.uuid4())
c.execute('insert into customers(id,name) values(?,?)',(cid,'c'))
c.execute('insert into projects(id,customer_id,name) values(?,?,?)',(pid,cid,'p'))
c.execute('insert into sites(id,project_id,name) values(?,?,?)',(sid,pid,'s'))
devs=[str(uuid.uuid4()) for _ in range(102)]
for i,d in enumerate(devs): c.execute('insert into devices(id,site_id,name,device_type) values(?,?,?,?)',(d,sid,'d%d'%i,'meter'))
keys=['project:%s:%s'%(pid,n) for n in ('voltage','current','power')]
for k in keys: c.execute('insert into parameter_templates(key,name) values(?,?)',(k,k))
UP=("INSERT INTO ingest_events (time, device_id, parameter_key, value, quality, source, event_id, attributes) "
 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (time, device_id, parameter_key) DO UPDATE SET "
 "value = excluded.value, quality = excluded.quality, source = excluded.source, event_id = excluded.event_id, attributes = excluded.attributes")
if variant=='plaininsert':
    UP="INSERT INTO ingest_events (time, device_id, parameter_key, value, quality, source, event_id, attributes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
base=datetime.datetime.now(datetime.timezone.utc)
rows=[]
i=0
while len(rows)<N:
    d=devs[i%len(devs)]
    t=(base+datetime.timedelta(microseconds=i)).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    for k in keys:
        rows.append((t,d,k,200+(i%4000)/100,192,'GPRS','%s:%s:%s'%(d,t,k),'{"unit":"V"}'))
    i+=1
rows=rows[:N]
if variant=='sorted':
    pass
r0=resource.getrusage(resource.RUSAGE_SELF); t0=time.time()
TX=int(os.environ.get('TX','1500'))
for j in range(0,N,TX):
    c.execute('BEGIN')
    c.executemany(UP, rows[j:j+TX])
    c.execute('COMMIT')
dt=time.time()-t0; r1=resource.getrusage(resource.RUSAGE_SELF)
cpu=(r1.ru_utime-r0.ru_utime)+(r1.ru_stime-r0.ru_stime)
print(f"{variant:12s} {N/dt:9.0f} rows/s  cpu {cpu*1e6/N:6.1f} us/row  sys {(r1.ru_stime-r0.ru_stime)*1e6/N:5.1f}")

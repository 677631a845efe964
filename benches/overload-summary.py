import json, os, sys
DIR = os.environ.get('OUT_DIR', '/tmp/redrain-overload')
# usage: summarize.py NAME...  -> one table row per run
def metric(text, name, needles=()):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in '{ ') and all(n in line for n in needles):
            total += float(line.rsplit(' ', 1)[1])
    return total
for name in sys.argv[1:]:
    d = json.load(open(f'{DIR}/{name}.json'))
    m = open(f'{DIR}/{name}.metrics').read()
    c = d['scenario_counters']
    secs = d['measured_s']
    shakes_ok = c['shakes'] - c['busy'] - c['paused'] - c['too_fast']
    goodput = (shakes_ok + c['opened'] + c['repeated_opens']) / secs
    offered = d['config'].get('offered_rate_per_s')
    lat = d['request_latency'] if 'request_latency' in d else d['latency']
    rej = {}
    for cls in ['redeem', 'shake', 'admit']:
        for reason in ['queue_delay', 'degraded', 'paused']:
            v = metric(m, 'redrain_admission_rejected_total', (f'class="{cls}"', f'reason="{reason}"'))
            if v: rej[f'{cls}/{reason}'] = int(v)
    too_fast = int(metric(m, 'redrain_rejected_frames_total', ('reason="too_fast"',)))
    busy_all = int(metric(m, 'redrain_rejected_frames_total', ('reason="busy"',)))
    rss = metric(m, 'redrain_process_resident_bytes') / 2**20
    lvl = metric(m, 'redrain_degrade_level')
    print(f"| {name} | {offered} | {d['sent_rate_per_s']:.0f} | {goodput:.0f} | opened {c['opened']} open_errors {c['open_errors']} | {rej} busy={busy_all} too_fast={too_fast} skips={c['backoff_skips']} pushes={c['backoff_pushes']} | {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} | {rss:.1f} MiB | level {lvl:.0f} | errors {d['errors_by_code']} |")

# Reads the strace and dbstat dumps of wal_pages.sh: frames per commit and per b-tree.
import re, sys, collections
trace, pages, sent = sys.argv[1], sys.argv[2], int(sys.argv[3]) - 1
names = {}
for l in open(pages):
    p, n = l.rstrip('\n').split('|', 1)
    names[int(p)] = n
walfd = set()
commits = []  # list of list of page numbers
cur = []
pw = 0
for l in open(trace):
    m = re.search(r'openat\(.*"([^"]*)".*= (\d+)$', l)
    if m:
        if m.group(1).endswith('-wal'):
            walfd.add(m.group(2))
        continue
    m = re.search(r'pwrite64\((\d+), "([^"]*)"\.*, (\d+), (\d+)\)', l)
    if not m:
        continue
    pw += 1
    fd, buf, ln = m.group(1), m.group(2), int(m.group(3))
    if ln != 24:
        continue
    b = bytes(int(x, 16) for x in buf.split('\\x')[1:])
    page = int.from_bytes(b[0:4], 'big'); commit = int.from_bytes(b[4:8], 'big')
    cur.append(page)
    if commit:
        commits.append(cur); cur = []
frames = sum(len(c) for c in commits)
print(f"messages {sent}; pwrite64 {pw} ({pw/sent:.2f}/msg); commits {len(commits)} ({len(commits)/sent:.3f}/msg, {sent/len(commits):.2f} msg/commit); frames {frames} ({frames/sent:.2f}/msg, {frames/len(commits):.2f}/commit)")
by = collections.Counter(names.get(p, '?') for c in commits for p in c)
for n, k in by.most_common():
    print(f"  {n:35s} {k:8d} frames {k/sent:6.3f}/msg {k/len(commits):6.2f}/commit")
sizes = collections.Counter(len(c) for c in commits)
print("frames per commit histogram:", sorted(sizes.items())[:30])
